package fairqueue

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// job is a simulated request: its exact usage, known only once it has run.
type job struct {
	tenant  string
	in, out int64
}

type simTenant struct {
	name    string
	class   Class
	weight  int
	perTick int
}

type running struct {
	e   *Entry[job]
	end int
}

// fleet simulates a saturated revision on an injected clock: slots
// concurrent requests, each running 1 + out/100 ticks, its exact usage
// charged (Settle) when it ends.
type fleet struct {
	q      *Queue[job]
	rnd    *rand.Rand
	slots  int
	run    []running
	served map[string]int64 // exact tokens of finished requests
}

func newFleet(cfg Config, slots int, seed uint64) *fleet {
	return &fleet{q: New[job](cfg), rnd: rand.New(rand.NewPCG(seed, 1)), slots: slots, served: map[string]int64{}}
}

func (f *fleet) arrive(t *testing.T, tick int, tenants []simTenant) {
	for _, tn := range tenants {
		for range tn.perTick {
			j := job{tenant: tn.name, in: 50 + f.rnd.Int64N(450), out: 10 + f.rnd.Int64N(290)}
			_, _, err := f.q.Push(Request[job]{Tenant: tn.name, Class: tn.class, Weight: tn.weight,
				InputTokens: j.in, OutputTokens: 300, Arrival: at(tick), Value: j})
			require.NoError(t, err)
		}
	}
}

// step ends the requests due at tick and fills the freed slots.
func (f *fleet) step(tick int) {
	kept := f.run[:0]
	for _, r := range f.run {
		if r.end > tick {
			kept = append(kept, r)
			continue
		}
		j := r.e.Value()
		f.q.Settle(r.e, j.in, j.out)
		f.served[j.tenant] += j.in + j.out
	}
	f.run = kept
	for len(f.run) < f.slots {
		e, ok := f.q.Pop(at(tick))
		if !ok {
			return
		}
		f.run = append(f.run, running{e: e, end: tick + 1 + int(e.Value().out/100)})
	}
}

func backlogged(q *Queue[job], tenants ...string) bool {
	for _, tn := range tenants {
		if s, _ := q.Tenant(tn); s.WaitingByClass == [NumClasses]int{} {
			return false
		}
	}
	return true
}

func TestVTCFairness(t *testing.T) {
	fcfs := Config{MaxWait: [NumClasses]time.Duration{Standard: time.Nanosecond}, AgingPeriod: 1}
	for _, tc := range []struct {
		name           string
		cfg            Config
		a, b           simTenant
		wantA, epsilon float64 // a's share of the tokens served
	}{
		{"8x the rate, equal weights, estimate then exact", Config{ChargeOnRelease: true},
			simTenant{"heavy", Standard, 1, 16}, simTenant{"light", Standard, 1, 2}, 0.5, 0.05},
		{"8x the rate, equal weights, exact usage only", Config{},
			simTenant{"heavy", Standard, 1, 16}, simTenant{"light", Standard, 1, 2}, 0.5, 0.05},
		{"weights 2:1", Config{ChargeOnRelease: true},
			simTenant{"a", Standard, 2, 8}, simTenant{"b", Standard, 1, 8}, 2.0 / 3, 0.1 * 2 / 3},
		{"weights 2:1, exact usage only", Config{},
			simTenant{"a", Standard, 2, 8}, simTenant{"b", Standard, 1, 8}, 2.0 / 3, 0.1 * 2 / 3},
		// The baseline the feature replaces: first come, first served.
		{"FCFS baseline", fcfs,
			simTenant{"heavy", Standard, 1, 16}, simTenant{"light", Standard, 1, 2}, 8.0 / 9, 0.05},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(tc.cfg, 4, 1)
			checked := 0
			for tick := range 3000 {
				f.arrive(t, tick, []simTenant{tc.a, tc.b})
				f.step(tick)
				if tick%100 == 99 && tick > 200 {
					require.True(t, backlogged(f.q, tc.a.name, tc.b.name), "tick %d", tick)
					a, b := float64(f.served[tc.a.name]), float64(f.served[tc.b.name])
					require.InDelta(t, tc.wantA, a/(a+b), tc.epsilon, "tick %d: %v", tick, f.served)
					checked++
				}
			}
			require.Equal(t, 28, checked)
		})
	}
}

// overdueWatch checks the documented aging bound: an item x of an aging
// class leaves by the E*(K_x+1)-th release after its deadline d_x, K_x being
// the other items waiting then with deadlines <= d_x.
type overdueWatch struct {
	period   int
	releases int                 // releases so far
	waiting  map[*Entry[job]]int // aging items -> the release index by which they must leave (-1: not yet overdue)
	worst    int                 // largest wait seen, in ticks
}

func (w *overdueWatch) pushed(e *Entry[job]) {
	if !e.deadline.IsZero() {
		w.waiting[e] = -1
	}
}

// beforePop records the items that became overdue since the last release.
func (w *overdueWatch) beforePop(now time.Time) {
	for x, due := range w.waiting {
		if due >= 0 || !now.After(x.deadline) {
			continue
		}
		k := 0
		for y := range w.waiting {
			if y != x && !y.deadline.After(x.deadline) {
				k++
			}
		}
		w.waiting[x] = w.releases + w.period*(k+1)
	}
}

func (w *overdueWatch) left(t *testing.T, e *Entry[job], tick int) {
	due, ok := w.waiting[e]
	if !ok {
		return
	}
	delete(w.waiting, e)
	if due >= 0 {
		require.LessOrEqual(t, w.releases, due, "released after its bound")
	}
	w.worst = max(w.worst, tick-int(e.req.Arrival.Sub(t0)/time.Second))
}

func TestAgingBound(t *testing.T) {
	const (
		maxWait = 20 // ticks
		period  = 4
	)
	for _, tc := range []struct {
		name           string
		critical       int // critical arrivals per tick
		sheddableEvery int // one sheddable arrival every so many ticks
		tenants        int // sheddable tenants
		limit          int // MaxWaitingPerClass[Sheddable]
	}{
		{"continuous critical flood", 2, 5, 1, 0},
		{"flood, sheddable near its aged share", 3, 4, 1, 0},
		{"flood, several sheddable tenants", 2, 5, 3, 0},
		{"flood, sheddable beyond its aged share", 2, 3, 3, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{
				MaxWait:            [NumClasses]time.Duration{Sheddable: maxWait * time.Second},
				MaxWaitingPerClass: [NumClasses]int{Sheddable: tc.limit},
				AgingPeriod:        period,
				ChargeOnRelease:    true,
			}
			q := New[job](cfg)
			w := &overdueWatch{period: period, waiting: map[*Entry[job]]int{}}
			maxWaiting := 0
			for tick := range 5000 {
				for range tc.critical {
					_, _, err := q.Push(Request[job]{Tenant: "c", Class: Critical, InputTokens: 100, Arrival: at(tick)})
					require.NoError(t, err)
				}
				if tick%tc.sheddableEvery == 0 {
					e, _, err := q.Push(Request[job]{Tenant: string(rune('a' + tick%tc.tenants)), Class: Sheddable, InputTokens: 100, Arrival: at(tick)})
					if tc.limit > 0 && err != nil {
						require.ErrorIs(t, err, ErrClassFull)
					} else {
						require.NoError(t, err)
						w.pushed(e)
					}
				}
				maxWaiting = max(maxWaiting, q.Stats().WaitingByClass[Sheddable])
				w.beforePop(at(tick))
				e, ok := q.Pop(at(tick)) // one release per tick: R = 1 tick
				require.True(t, ok)
				w.releases++
				w.left(t, e, tick)
			}
			// The coarse bound, with N the most sheddable items ever waiting.
			bound := maxWait + period*maxWaiting
			require.LessOrEqual(t, w.worst, bound)
			require.Greater(t, w.worst, maxWait, "the flood did delay sheddable items")
			require.LessOrEqual(t, len(w.waiting), maxWaiting)
			s := q.Stats()
			require.LessOrEqual(t, s.Counts.Aged, s.Counts.Released/period+1, "at most one release in E is aged")
			t.Logf("worst sheddable wait %d ticks (bound %d), aged %d of %d", w.worst, bound, s.Counts.Aged, s.Counts.Released)
		})
	}
}

func TestAgingProtectsCritical(t *testing.T) {
	// A 3x overload of sheddable traffic: critical items, arriving at half
	// the release rate, wait at most the one aged release in E.
	cfg := Config{MaxWaiting: 100, MaxWait: [NumClasses]time.Duration{Sheddable: 10 * time.Second}, AgingPeriod: 8, ChargeOnRelease: true}
	q := New[job](cfg)
	w := &overdueWatch{period: cfg.AgingPeriod, waiting: map[*Entry[job]]int{}}
	worstCritical, refused, evicted := 0, 0, 0
	for tick := range 5000 {
		for range 3 {
			e, _, err := q.Push(Request[job]{Tenant: "s", Class: Sheddable, Arrival: at(tick)})
			if err != nil {
				require.ErrorIs(t, err, ErrFull)
				refused++
				continue
			}
			w.pushed(e)
		}
		if tick%2 == 0 {
			_, ev, err := q.Push(Request[job]{Tenant: "c", Class: Critical, Arrival: at(tick)})
			require.NoError(t, err)
			if ev != nil {
				require.Equal(t, Sheddable, ev.req.Class)
				evicted++
				w.left(t, ev, tick)
			}
		}
		w.beforePop(at(tick))
		e, ok := q.Pop(at(tick))
		require.True(t, ok)
		w.releases++
		if e.req.Class == Critical {
			worstCritical = max(worstCritical, tick-int(e.req.Arrival.Sub(t0)/time.Second))
		}
		w.left(t, e, tick)
	}
	require.LessOrEqual(t, worstCritical, 1)
	require.Positive(t, refused)
	require.Positive(t, evicted)
	require.LessOrEqual(t, w.worst, 10+8*100, "sheddable: A + E*N*R")
}
