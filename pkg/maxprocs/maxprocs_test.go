package maxprocs

import (
	"context"
	"io"
	"log/slog"
	"math"
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
		{"a saturated P gets Max at once", 1, []float64{0.95}, []int{4}},
		{"saturated Ps get Max at once", 2, []float64{1.85}, []int{4}},
		{"never beyond Max", 1, []float64{9}, []int{4}},
		{"fewer only after Hold reads in a row", 4, []float64{0.1, 0.1, 0.1}, []int{4, 4, 1}},
		{"a busy read restarts the hold", 4, []float64{0.1, 0.1, 1.9, 0.1, 0.1}, []int{4, 4, 4, 4, 4}},
		{"inside the gap: no change", 2, []float64{0.45, 0.45, 0.45, 0.45}, []int{2, 2, 2, 2}},
		{"under the gap: down", 2, []float64{0.37, 0.37, 0.37}, []int{2, 2, 1}},
		{"down to what the use asks, not one", 4, []float64{1.1, 1.1, 1.1}, []int{4, 4, 3}},
		{"down to what the busiest read of the hold asked", 4, []float64{1.1, 0.1, 0.1}, []int{4, 4, 3}},
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
	err := Config{Max: -1, PerP: 2, LowerAt: math.NaN(), Hold: -1, Interval: -time.Second}.Validate()
	require.Error(t, err)
	for _, field := range []string{"Max:", "PerP:", "LowerAt:", "Hold:", "Interval:"} {
		assert.ErrorContains(t, err, field)
	}
	assert.ErrorContains(t, Config{PerP: math.NaN()}.Validate(), "PerP:")
	assert.NoError(t, Config{}.Validate())
	assert.ErrorContains(t, Run(t.Context(), Config{Hold: -1}, discard()), "Hold:")
}

func TestPinnedAsTheRuntimeReadsIt(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "-1": false, "abc": false, "2x": false, "1": true, "3": true} {
		t.Setenv("GOMAXPROCS", v)
		assert.Equal(t, want, Pinned(), "GOMAXPROCS=%q", v)
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fake is a runtime whose clock, CPU time and pinning the test sets, and
// which records every GOMAXPROCS set.
type fake struct {
	pin      bool
	def      int
	cur      int
	set      []int
	defaults int // setDefault calls
	reads    chan time.Duration
	clock    chan time.Time
	tick     chan time.Time
}

func newFake(def int) *fake {
	return &fake{def: def, cur: def, reads: make(chan time.Duration), clock: make(chan time.Time), tick: make(chan time.Time)}
}

func (f *fake) pinned() bool { return f.pin }
func (f *fake) gomaxprocs(n int) int {
	prev := f.cur
	if n > 0 {
		f.cur = n
		f.set = append(f.set, n)
	}
	return prev
}
func (f *fake) setDefault()                 { f.defaults++; f.cur = f.def }
func (f *fake) cpu() (time.Duration, error) { return <-f.reads, nil }
func (f *fake) now() time.Time              { return <-f.clock }
func (f *fake) ticks(time.Duration) (<-chan time.Time, func()) {
	return f.tick, func() {}
}

var _ procs = (*fake)(nil)

func TestRunFollowsTheUse(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	f := newFake(4)
	done := make(chan error)
	go func() { done <- run(ctx, Config{PerP: 0.5, Hold: 2, LowerAt: 0.75}, discard(), f) }()
	at, used := time.Unix(1000, 0), time.Duration(0)
	f.reads <- used // the starting read
	f.clock <- at
	read := func(d, u time.Duration) {
		f.tick <- time.Time{}
		used += u
		f.reads <- used
		at = at.Add(d)
		f.clock <- at
	}
	read(time.Second, 100*time.Millisecond)  // 0.1 cores: one P
	read(time.Second, 700*time.Millisecond)  // 0.7: two
	read(time.Second, 1900*time.Millisecond) // 1.9 on two: saturated, Max
	read(time.Second, 100*time.Millisecond)  // 0.1: one below
	read(0, 0)                               // no time passed: not a read (0/0 would count as a second one below)
	f.tick <- time.Time{}                    // run has finished the step before
	assert.Equal(t, []int{1, 2, 4}, f.set, "a read over no time changed the Ps")
	used += 100 * time.Millisecond
	f.reads <- used
	at = at.Add(time.Second)
	f.clock <- at // 0.1: two below: one P
	cancel()
	require.NoError(t, <-done)
	assert.Equal(t, []int{1, 2, 4, 1}, f.set)
	assert.Equal(t, 1, f.defaults, "the runtime's default is given back")
	assert.Equal(t, 4, f.cur)
}

func TestRunLeavesAPinnedGOMAXPROCS(t *testing.T) {
	f := newFake(3)
	f.pin = true
	require.NoError(t, run(t.Context(), Config{}, discard(), f)) // returns at once: it would block on f.reads
	assert.Empty(t, f.set)
	assert.Zero(t, f.defaults)
}

func TestRunLeavesOneCPUAlone(t *testing.T) {
	f := newFake(1)
	require.NoError(t, run(t.Context(), Config{}, discard(), f))
	assert.Empty(t, f.set)
}

func TestRunGivesPsToABusyProcess(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 || Pinned() {
		t.Skip("one CPU, or GOMAXPROCS pinned: nothing to fit")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- Run(ctx, Config{Interval: 5 * time.Millisecond, PerP: 0.05}, discard()) }()
	// Burn CPU until Run gives a second P; it starts on one. Nothing else in
	// this test binary runs, so the use it reads is this loop's.
	sawOne, sawMore := false, false
	deadline := time.Now().Add(30 * time.Second)
	for !sawMore && time.Now().Before(deadline) {
		switch runtime.GOMAXPROCS(0) {
		case 1:
			sawOne = true
		default:
			sawMore = sawOne
		}
	}
	cancel()
	require.NoError(t, <-done)
	assert.True(t, sawOne, "never on one P")
	assert.True(t, sawMore, "never given a second P while busy")
}
