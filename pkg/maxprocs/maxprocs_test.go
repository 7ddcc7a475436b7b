package maxprocs

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStep(t *testing.T) {
	cfg := Config{Max: 4, PerP: 0.5, Hold: 3, LowerAt: 0.75}
	for _, tc := range []struct {
		name  string
		procs int
		uses  []float64
		want  []int
	}{
		{"idle stays on one P", 1, []float64{0, 0.01, 0.3}, []int{1, 1, 1}},
		{"half a core is still one P", 1, []float64{0.5}, []int{1}},
		{"more asks for more at once", 1, []float64{0.51}, []int{2}},
		{"a saturated P asks for two", 1, []float64{1.0}, []int{2}},
		{"never beyond Max", 1, []float64{9}, []int{4}},
		{"fewer only after Hold reads in a row", 4, []float64{0.1, 0.1, 0.1}, []int{4, 4, 1}},
		{"a busy read restarts the hold", 4, []float64{0.1, 0.1, 1.9, 0.1, 0.1}, []int{4, 4, 4, 4, 4}},
		{"inside the gap: no change", 2, []float64{0.45, 0.45, 0.45, 0.45}, []int{2, 2, 2, 2}},
		{"under the gap: down", 2, []float64{0.37, 0.37, 0.37}, []int{2, 2, 1}},
		{"down to what the use asks, not one", 4, []float64{1.1, 1.1, 1.1}, []int{4, 4, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := state{procs: tc.procs}
			var got []int
			for _, u := range tc.uses {
				got = append(got, s.step(u, cfg))
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestValidateNamesTheField(t *testing.T) {
	err := Config{Max: -1, PerP: 2, LowerAt: -1, Hold: -1, Interval: -time.Second}.Validate()
	require.Error(t, err)
	for _, field := range []string{"max:", "perP:", "lowerAt:", "hold:", "interval:"} {
		assert.ErrorContains(t, err, field)
	}
	assert.NoError(t, Config{}.Validate())
}

// fake is a process whose CPU time and GOMAXPROCS the test sets.
type fake struct {
	cpu   time.Duration
	procs []int // every value set, in order
}

func (f *fake) cpuTime() (time.Duration, error) { return f.cpu, nil }
func (f *fake) set(n int) int {
	f.procs = append(f.procs, n)
	return 0
}

func TestFitFollowsTheUse(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	ticks := make(chan time.Time)
	f := &fake{}
	start := time.Unix(1000, 0)
	cpu := make(chan time.Duration)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fit(ctx, Config{Max: 2, PerP: 0.5, Hold: 2, LowerAt: 0.75}, slog.New(slog.NewTextHandler(io.Discard, nil)), start, ticks,
			func() (time.Duration, error) { return <-cpu, nil }, f.set)
	}()
	cpu <- 0 // the starting read
	at, used := start, time.Duration(0)
	tick := func(d, u time.Duration) {
		at, used = at.Add(d), used+u
		ticks <- at
		cpu <- used
	}
	tick(time.Second, 100*time.Millisecond) // 0.1 cores: one P
	tick(time.Second, 900*time.Millisecond) // 0.9: two
	tick(time.Second, 800*time.Millisecond) // 0.8: stays
	tick(time.Second, 100*time.Millisecond) // 0.1: one below
	tick(time.Second, 100*time.Millisecond) // 0.1: two below: one P
	tick(0, 0)                              // no time passed: ignored
	cancel()
	<-done
	assert.Equal(t, []int{1, 2, 1}, f.procs)
}

func TestRunGivesPsToABusyProcessAndTheDefaultBack(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 || Pinned() {
		t.Skip("one CPU, or GOMAXPROCS pinned: nothing to fit")
	}
	def := runtime.GOMAXPROCS(0)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Config{Interval: 5 * time.Millisecond, PerP: 0.05}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	// Burn CPU until Run gives a second P; it starts on one. Nothing else in
	// this test binary runs, so the use it reads is this loop's.
	sawOne, sawMore := false, false
	deadline := time.Now().Add(30 * time.Second)
	for x := 0; !sawMore && time.Now().Before(deadline); x++ {
		switch runtime.GOMAXPROCS(0) {
		case 1:
			sawOne = true
		default:
			sawMore = sawOne
		}
	}
	cancel()
	<-done
	assert.True(t, sawOne, "never on one P")
	assert.True(t, sawMore, "never given a second P while busy")
	assert.Equal(t, def, runtime.GOMAXPROCS(0), "the runtime's default is back")
}

func TestRunLeavesAPinnedGOMAXPROCS(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	before := runtime.GOMAXPROCS(0)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	Run(ctx, Config{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	assert.Equal(t, before, runtime.GOMAXPROCS(0))
}
