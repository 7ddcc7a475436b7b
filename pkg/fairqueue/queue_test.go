package fairqueue

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Unix(1_700_000_000, 0)

// at is the simulated clock: tick i.
func at(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }

type push struct {
	tenant string
	class  Class
	weight int
	in     int64
	out    int64
	tick   int
	id     string
}

func (p push) req() Request[string] {
	return Request[string]{Tenant: p.tenant, Class: p.class, Weight: p.weight, InputTokens: p.in, OutputTokens: p.out, Arrival: at(p.tick), Value: p.id}
}

// popAll pops q empty at tick now and returns the values in release order.
func popAll(q *Queue[string], now int) []string {
	var out []string
	for {
		e, ok := q.Pop(at(now))
		if !ok {
			return out
		}
		out = append(out, e.Value())
	}
}

func TestParseClass(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Class
		wantErr bool
	}{
		{"critical", Critical, false},
		{"standard", Standard, false},
		{"", Standard, false},
		{"sheddable", Sheddable, false},
		{"urgent", Standard, true},
	} {
		got, err := ParseClass(tc.in)
		require.Equal(t, tc.wantErr, errors.Is(err, ErrBadClass), tc.in)
		require.Equal(t, tc.want, got, tc.in)
		if !tc.wantErr && tc.in != "" {
			require.Equal(t, tc.in, got.String())
		}
	}
	require.Equal(t, "Class(7)", Class(7).String())
	_, _, err := New[string](Config{}).Push(Request[string]{Class: 3})
	require.ErrorIs(t, err, ErrBadClass)
}

func TestReleaseOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		pushes []push
		served map[string]int64 // charged through Served before popping
		want   []string
	}{{
		name: "classes high to low, FIFO within a tenant",
		pushes: []push{
			{tenant: "a", class: Sheddable, id: "s1"},
			{tenant: "a", class: Standard, id: "n1"},
			{tenant: "a", class: Critical, id: "c1"},
			{tenant: "a", class: Standard, id: "n2"},
			{tenant: "a", class: Critical, id: "c2"},
			{tenant: "a", class: Sheddable, id: "s2"},
		},
		want: []string{"c1", "c2", "n1", "n2", "s1", "s2"},
	}, {
		name:   "smallest counter first within a class",
		served: map[string]int64{"a": 100, "b": 10},
		pushes: []push{
			{tenant: "b", class: Standard, id: "b1"},
			{tenant: "a", class: Standard, id: "a1"},
			{tenant: "c", class: Standard, id: "c1"},
		},
		// c is lifted to b's 10 on arrival; b's head arrived first.
		want: []string{"b1", "c1", "a1"},
	}, {
		name: "equal counters alternate, the shorter backlog first, estimates charged",
		cfg:  Config{ChargeOnRelease: true},
		pushes: []push{
			{tenant: "a", class: Standard, in: 10, id: "a1"},
			{tenant: "a", class: Standard, in: 10, id: "a2"},
			{tenant: "a", class: Standard, in: 10, id: "a3"},
			{tenant: "b", class: Standard, in: 10, id: "b1"},
			{tenant: "b", class: Standard, in: 10, id: "b2"},
		},
		want: []string{"b1", "a1", "b2", "a2", "a3"},
	}, {
		name: "weight 2 gets two releases for one",
		cfg:  Config{ChargeOnRelease: true},
		pushes: []push{
			{tenant: "a", class: Standard, weight: 2, in: 10, id: "a1"},
			{tenant: "a", class: Standard, weight: 2, in: 10, id: "a2"},
			{tenant: "a", class: Standard, weight: 2, in: 10, id: "a3"},
			{tenant: "b", class: Standard, weight: 1, in: 10, id: "b1"},
			{tenant: "b", class: Standard, weight: 1, in: 10, id: "b2"},
		},
		// b first: counters tie at 0 and b has the shorter backlog.
		want: []string{"b1", "a1", "a2", "a3", "b2"},
	}, {
		name: "a newcomer lifted to the backlog's counter goes before it",
		cfg:  Config{ChargeOnRelease: true},
		pushes: []push{
			{tenant: "heavy", class: Standard, weight: 1, in: 10, id: "h1"},
			{tenant: "heavy", class: Standard, weight: 1, in: 10, id: "h2"},
			{tenant: "heavy", class: Standard, weight: 1, in: 10, id: "h3"},
			{tenant: "light", class: Standard, weight: 1, in: 10, id: "l1"},
		},
		want: []string{"l1", "h1", "h2", "h3"},
	}, {
		name: "a lower class item overdue goes first",
		cfg:  Config{MaxWait: [NumClasses]time.Duration{Sheddable: 5 * time.Second}, AgingPeriod: 1},
		pushes: []push{
			{tenant: "a", class: Sheddable, tick: 0, id: "old"},
			{tenant: "a", class: Sheddable, tick: 8, id: "young"},
			{tenant: "b", class: Critical, tick: 9, id: "c1"},
		},
		want: []string{"old", "c1", "young"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			q := New[string](tc.cfg)
			for tenant, n := range tc.served {
				q.Served(tenant, n, 0)
			}
			for _, p := range tc.pushes {
				_, _, err := q.Push(p.req())
				require.NoError(t, err)
			}
			require.Equal(t, tc.want, popAll(q, 10))
			require.Zero(t, q.Stats().Waiting)
		})
	}
}

func TestOverload(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cfg         Config
		pushes      []push
		wantErr     []error  // per push
		wantEvicted []string // per push, "" for none
		wantLeft    []string
	}{{
		name: "sheddable refused when full",
		cfg:  Config{MaxWaiting: 2},
		pushes: []push{
			{class: Standard, id: "n1"}, {class: Critical, id: "c1"}, {class: Sheddable, id: "s1"},
		},
		wantErr:     []error{nil, nil, ErrFull},
		wantEvicted: []string{"", "", ""},
		wantLeft:    []string{"c1", "n1"},
	}, {
		name: "the oldest of the lowest class is shed first",
		cfg:  Config{MaxWaiting: 4},
		pushes: []push{
			{class: Standard, id: "n1"}, {class: Sheddable, id: "s1"}, {class: Sheddable, id: "s2"}, {class: Standard, id: "n2"},
			{class: Critical, id: "c1"}, {class: Standard, id: "n3"}, {class: Critical, id: "c2"}, {class: Critical, id: "c3"},
		},
		wantErr:     []error{nil, nil, nil, nil, nil, nil, nil, nil},
		wantEvicted: []string{"", "", "", "", "s1", "s2", "n1", "n2"},
		wantLeft:    []string{"c1", "c2", "c3", "n3"},
	}, {
		name: "nothing lower: the newcomer is refused",
		cfg:  Config{MaxWaiting: 2},
		pushes: []push{
			{class: Critical, id: "c1"}, {class: Standard, id: "n1"}, {class: Standard, id: "n2"}, {class: Critical, id: "c2"}, {class: Critical, id: "c3"},
		},
		wantErr:     []error{nil, nil, ErrFull, nil, ErrFull},
		wantEvicted: []string{"", "", "", "n1", ""},
		wantLeft:    []string{"c1", "c2"},
	}, {
		name: "a class at its own bound is refused even with room",
		cfg:  Config{MaxWaiting: 10, MaxWaitingPerClass: [NumClasses]int{Sheddable: 1}},
		pushes: []push{
			{class: Sheddable, id: "s1"}, {class: Sheddable, id: "s2"}, {class: Standard, id: "n1"},
		},
		wantErr:     []error{nil, ErrClassFull, nil},
		wantEvicted: []string{"", "", ""},
		wantLeft:    []string{"n1", "s1"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			q := New[string](tc.cfg)
			var refused int
			for i, p := range tc.pushes {
				p.tenant = "t"
				e, ev, err := q.Push(p.req())
				if tc.wantErr[i] != nil {
					refused++
					require.ErrorIs(t, err, tc.wantErr[i], p.id)
					require.Nil(t, e)
				} else {
					require.NoError(t, err, p.id)
					require.Equal(t, p.id, e.Value())
				}
				if tc.wantEvicted[i] == "" {
					require.Nil(t, ev, p.id)
				} else {
					require.Equal(t, tc.wantEvicted[i], ev.Value(), p.id)
					require.False(t, q.Remove(ev), "an evicted entry is gone")
				}
			}
			require.Equal(t, uint64(refused), q.Stats().Counts.Refused)
			require.Equal(t, tc.wantLeft, popAll(q, 0))
		})
	}
}

func TestRemove(t *testing.T) {
	q := New[string](Config{ChargeOnRelease: true})
	var es []*Entry[string]
	for _, p := range []push{
		{tenant: "a", id: "a1", in: 1}, {tenant: "a", id: "a2", in: 1}, {tenant: "a", id: "a3", in: 1},
		{tenant: "b", id: "b1", in: 1}, {tenant: "c", id: "c1", in: 1}, {tenant: "c", id: "c2", in: 1},
	} {
		e, _, err := q.Push(p.req())
		require.NoError(t, err)
		es = append(es, e)
	}
	require.True(t, q.Remove(es[0]), "a tenant's head")
	require.True(t, q.Remove(es[2]), "a tenant's tail")
	require.True(t, q.Remove(es[3]), "a tenant's only item")
	require.False(t, q.Remove(es[3]), "twice")
	require.False(t, q.Remove(nil))
	s := q.Stats()
	require.Equal(t, 3, s.Waiting)
	require.Equal(t, 2, s.BackloggedByClass[Sheddable])
	require.Equal(t, uint64(3), s.Counts.Removed)
	e, ok := q.Pop(at(0))
	require.True(t, ok)
	require.Equal(t, "a2", e.Value())
	require.False(t, q.Remove(e), "released")
	require.Equal(t, []string{"c1", "c2"}, popAll(q, 0))
	ts, ok := q.Tenant("b")
	require.True(t, ok)
	require.Zero(t, ts.Counter, "a removed item is not charged")
}

func TestSettle(t *testing.T) {
	for _, tc := range []struct {
		name          string
		cfg           Config
		weight        int
		afterRelease  float64
		afterSettle   float64
		settleIn, out int64
	}{
		{name: "estimate then exact", cfg: Config{ChargeOnRelease: true}, weight: 2, afterRelease: 60, afterSettle: 25, settleIn: 20, out: 30},
		{name: "cancelled: what was generated", cfg: Config{ChargeOnRelease: true}, weight: 1, afterRelease: 120, afterSettle: 23, settleIn: 20, out: 3},
		{name: "only exact usage", cfg: Config{}, weight: 1, afterRelease: 0, afterSettle: 50, settleIn: 20, out: 30},
		{name: "output tokens cost 2", cfg: Config{ChargeOnRelease: true, OutputTokenCost: 2}, weight: 1, afterRelease: 220, afterSettle: 80, settleIn: 20, out: 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := New[string](tc.cfg)
			e, _, err := q.Push(push{tenant: "a", weight: tc.weight, in: 20, out: 100}.req())
			require.NoError(t, err)
			require.False(t, q.Settle(e, 1, 1), "still waiting")
			_, ok := q.Pop(at(0))
			require.True(t, ok)
			ts, _ := q.Tenant("a")
			require.InDelta(t, tc.afterRelease, ts.Counter, 1e-9)
			require.True(t, q.Settle(e, tc.settleIn, tc.out))
			require.False(t, q.Settle(e, tc.settleIn, tc.out), "twice")
			ts, _ = q.Tenant("a")
			require.InDelta(t, tc.afterSettle, ts.Counter, 1e-9)
		})
	}
}

func TestServedReorders(t *testing.T) {
	q := New[string](Config{})
	for _, p := range []push{{tenant: "a", id: "a1"}, {tenant: "b", id: "b1"}, {tenant: "a", class: Critical, id: "ac"}} {
		_, _, err := q.Push(p.req())
		require.NoError(t, err)
	}
	q.Served("a", 5, 5) // a is backlogged in two classes; both move
	require.Equal(t, []string{"ac", "b1", "a1"}, popAll(q, 0))
	ts, ok := q.Tenant("a")
	require.True(t, ok)
	require.Equal(t, 10.0, ts.Counter)
}

func TestLift(t *testing.T) {
	t.Run("a newly active tenant gets its share, not a burst", func(t *testing.T) {
		q := New[string](Config{ChargeOnRelease: true})
		for i := range 200 {
			for _, tn := range []string{"a", "b"} {
				_, _, err := q.Push(push{tenant: tn, in: 100, id: tn}.req())
				require.NoError(t, err)
			}
			_ = i
		}
		for range 100 { // a and b build counters of 5,000 each
			_, ok := q.Pop(at(0))
			require.True(t, ok)
		}
		for range 50 {
			_, _, err := q.Push(push{tenant: "c", in: 100, id: "c"}.req())
			require.NoError(t, err)
		}
		ts, _ := q.Tenant("c")
		require.Equal(t, 5000.0, ts.Counter, "lifted to the smallest backlogged counter")
		got := map[string]int{}
		for range 30 {
			e, _ := q.Pop(at(0))
			got[e.Value()]++
		}
		require.LessOrEqual(t, got["c"], 11, "a third of the releases, give or take one: %v", got)
		require.GreaterOrEqual(t, got["c"], 9, "%v", got)
	})
	t.Run("with nobody backlogged, to the last tenant to leave", func(t *testing.T) {
		q := New[string](Config{})
		_, _, err := q.Push(push{tenant: "a", id: "a"}.req())
		require.NoError(t, err)
		q.Served("a", 700, 0)
		require.Equal(t, []string{"a"}, popAll(q, 0))
		_, _, err = q.Push(push{tenant: "b", id: "b"}.req())
		require.NoError(t, err)
		ts, _ := q.Tenant("b")
		require.Equal(t, 700.0, ts.Counter)
	})
	t.Run("never lowered", func(t *testing.T) {
		q := New[string](Config{})
		q.Served("a", 900, 0)
		for _, tn := range []string{"b", "a"} {
			_, _, err := q.Push(push{tenant: tn, id: tn}.req())
			require.NoError(t, err)
		}
		ts, _ := q.Tenant("a")
		require.Equal(t, 900.0, ts.Counter)
		require.Equal(t, []string{"b", "a"}, popAll(q, 0))
	})
}

func TestForgetAndStats(t *testing.T) {
	q := New[string](Config{})
	e, _, err := q.Push(push{tenant: "a", class: Critical, weight: 3, id: "a"}.req())
	require.NoError(t, err)
	require.False(t, q.Forget("a"), "while waiting")
	ts, ok := q.Tenant("a")
	require.True(t, ok)
	require.Equal(t, TenantStats{WaitingByClass: [NumClasses]int{Critical: 1}, Weight: 3}, ts)
	require.Equal(t, Stats{
		Waiting: 1, WaitingByClass: [NumClasses]int{Critical: 1}, BackloggedByClass: [NumClasses]int{Critical: 1},
		Tenants: 1, Counts: Counts{Pushed: 1},
	}, q.Stats())
	require.True(t, q.Remove(e))
	require.True(t, q.Forget("a"))
	require.True(t, q.Forget("nobody"))
	_, ok = q.Tenant("a")
	require.False(t, ok)
}
