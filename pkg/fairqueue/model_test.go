package fairqueue

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// model is a naive, O(n) statement of the release rules, to check Queue
// against on random operations.
type model struct {
	cfg       Config
	items     []*mItem // waiting, in push order
	counter   map[string]float64
	weight    map[string]float64
	lastLeft  [NumClasses]float64
	hasLeft   [NumClasses]bool
	sinceAged int
	seq       int
}

type mItem struct {
	r        Request[int]
	deadline time.Time
	seq      int
	charged  float64
	state    entryState
}

func newModel(cfg Config) *model {
	q := New[int](cfg) // the same defaults
	return &model{cfg: q.cfg, counter: map[string]float64{}, weight: map[string]float64{}, sinceAged: q.cfg.AgingPeriod}
}

func (m *model) cost(in, out int64) float64 {
	return float64(in)*m.cfg.InputTokenCost + float64(out)*m.cfg.OutputTokenCost
}

func (m *model) count(keep func(*mItem) bool) int {
	n := 0
	for _, it := range m.items {
		if keep(it) {
			n++
		}
	}
	return n
}

func (m *model) first(keep func(*mItem) bool) *mItem {
	for _, it := range m.items {
		if keep(it) {
			return it
		}
	}
	return nil
}

func (m *model) weightOf(tenant string) float64 {
	if w, ok := m.weight[tenant]; ok {
		return w
	}
	m.weight[tenant] = 1
	return 1
}

func (m *model) take(x *mItem, state entryState) {
	for i, it := range m.items {
		if it == x {
			m.items = append(m.items[:i], m.items[i+1:]...)
			break
		}
	}
	x.state = state
	c, tn := x.r.Class, x.r.Tenant
	if m.count(func(it *mItem) bool { return it.r.Class == c && it.r.Tenant == tn }) == 0 {
		m.lastLeft[c], m.hasLeft[c] = m.counter[tn], true
	}
}

// push returns the evicted item, or refused.
func (m *model) push(r Request[int]) (x, evicted *mItem, refused bool) {
	c := r.Class
	if l := m.cfg.MaxWaitingPerClass[c]; l > 0 && m.count(func(it *mItem) bool { return it.r.Class == c }) >= l {
		return nil, nil, true
	}
	if m.cfg.MaxWaiting > 0 && len(m.items) >= m.cfg.MaxWaiting {
		for low := range c {
			if evicted = m.first(func(it *mItem) bool { return it.r.Class == low }); evicted != nil {
				break
			}
		}
		if evicted == nil {
			return nil, nil, true
		}
		m.take(evicted, stateEvicted)
	}
	m.weightOf(r.Tenant)
	m.weight[r.Tenant] = max(1, float64(r.Weight))
	if m.count(func(it *mItem) bool { return it.r.Class == c && it.r.Tenant == r.Tenant }) == 0 {
		floor, ok := m.lastLeft[c], m.hasLeft[c]
		if f, has := m.minBacklogged(c); has {
			floor, ok = f, true
		}
		if ok && m.counter[r.Tenant] < floor {
			m.counter[r.Tenant] = floor
		}
	}
	m.seq++
	x = &mItem{r: r, seq: m.seq}
	if d := m.cfg.MaxWait[c]; d > 0 {
		x.deadline = r.Arrival.Add(d)
	}
	m.items = append(m.items, x)
	return x, evicted, false
}

func (m *model) minBacklogged(c Class) (float64, bool) {
	var floor float64
	ok := false
	for _, it := range m.items {
		if v := m.counter[it.r.Tenant]; it.r.Class == c && (!ok || v < floor) {
			floor, ok = v, true
		}
	}
	return floor, ok
}

func (m *model) pop(now time.Time) *mItem {
	if len(m.items) == 0 {
		return nil
	}
	var x *mItem
	if m.sinceAged >= m.cfg.AgingPeriod-1 {
		for c := range Class(NumClasses) {
			h := m.first(func(it *mItem) bool { return it.r.Class == c })
			if h == nil || h.deadline.IsZero() || !now.After(h.deadline) {
				continue
			}
			if x == nil || h.deadline.Before(x.deadline) || h.deadline.Equal(x.deadline) && h.seq < x.seq {
				x = h
			}
		}
	}
	if x != nil {
		m.sinceAged = 0
	} else {
		m.sinceAged = min(m.sinceAged+1, m.cfg.AgingPeriod)
		top := Class(0)
		for _, it := range m.items {
			top = max(top, it.r.Class)
		}
		waiting := map[string]int{} // each tenant's items of the class
		for _, it := range m.items {
			if it.r.Class == top {
				waiting[it.r.Tenant]++
			}
		}
		for _, it := range m.items { // push order: the first of each tenant is its head
			if it.r.Class != top {
				continue
			}
			c, xc := m.counter[it.r.Tenant], 0.0
			if x != nil {
				xc = m.counter[x.r.Tenant]
			}
			if x == nil || c < xc || c == xc && waiting[it.r.Tenant] < waiting[x.r.Tenant] {
				x = it
			}
		}
	}
	m.take(x, stateReleased)
	if m.cfg.ChargeOnRelease {
		x.charged = m.cost(x.r.InputTokens, x.r.OutputTokens) / m.weight[x.r.Tenant]
		m.counter[x.r.Tenant] = m.counter[x.r.Tenant] + x.charged
	}
	return x
}

func (m *model) settle(x *mItem, in, out int64) bool {
	if x.state != stateReleased {
		return false
	}
	x.state = stateSettled
	tn := x.r.Tenant
	m.counter[tn] = m.counter[tn] + m.cost(in, out)/m.weightOf(tn) - x.charged
	return true
}

func randomConfig(rnd *rand.Rand) Config {
	pick := func(xs ...int) int { return xs[rnd.IntN(len(xs))] }
	cfg := Config{
		MaxWaiting:      pick(0, 5, 20),
		AgingPeriod:     pick(0, 1, 2, 4),
		InputTokenCost:  float64(pick(1, 2)),
		OutputTokenCost: float64(pick(0, 1, 2)),
		ChargeOnRelease: rnd.IntN(2) == 0,
	}
	for c := range cfg.MaxWait {
		cfg.MaxWait[c] = time.Duration(pick(0, 2, 5)) * time.Second
		cfg.MaxWaitingPerClass[c] = pick(0, 0, 4)
	}
	return cfg
}

func TestAgainstModel(t *testing.T) {
	for seed := range uint64(300) {
		rnd := rand.New(rand.NewPCG(seed, 2))
		cfg := randomConfig(rnd)
		q, m := New[int](cfg), newModel(cfg)
		entries := map[int]*Entry[int]{}
		items := map[int]*mItem{}
		var ids []int
		tenants := []string{"a", "b", "c", "d", "e"}
		now := t0
		for op := range 400 {
			id := op
			switch k := rnd.IntN(10); {
			case k < 5:
				r := Request[int]{Tenant: tenants[rnd.IntN(len(tenants))], Class: Class(rnd.IntN(NumClasses)), Weight: rnd.IntN(4),
					InputTokens: rnd.Int64N(100), OutputTokens: rnd.Int64N(100), Arrival: now, Value: id}
				e, ev, err := q.Push(r)
				x, mev, refused := m.push(r)
				require.Equal(t, refused, err != nil, "seed %d op %d", seed, op)
				require.Equal(t, mev != nil, ev != nil, "seed %d op %d", seed, op)
				if ev != nil {
					require.Equal(t, mev.r.Value, ev.Value(), "seed %d op %d", seed, op)
				}
				if e != nil {
					entries[id], items[id] = e, x
					ids = append(ids, id)
				}
			case k < 8:
				e, ok := q.Pop(now)
				x := m.pop(now)
				require.Equal(t, x != nil, ok, "seed %d op %d", seed, op)
				if ok {
					require.Equal(t, x.r.Value, e.Value(), "seed %d op %d", seed, op)
				}
			case k < 9 && len(ids) > 0:
				v := ids[rnd.IntN(len(ids))] // waiting or not
				e, x := entries[v], items[v]
				if rnd.IntN(2) == 0 {
					require.Equal(t, x.state == stateWaiting, q.Remove(e), "seed %d op %d", seed, op)
					if x.state == stateWaiting {
						m.take(x, stateRemoved)
					}
				} else {
					in, out := rnd.Int64N(100), rnd.Int64N(100)
					require.Equal(t, m.settle(x, in, out), q.Settle(e, in, out), "seed %d op %d", seed, op)
				}
			default:
				tn, in, out := tenants[rnd.IntN(len(tenants))], rnd.Int64N(100), rnd.Int64N(100)
				q.Served(tn, in, out)
				m.counter[tn] = m.counter[tn] + m.cost(in, out)/m.weightOf(tn)
			}
			now = now.Add(time.Duration(rnd.IntN(3)) * time.Second)
			require.Equal(t, len(m.items), q.Stats().Waiting, "seed %d op %d", seed, op)
			for _, tn := range tenants {
				s, _ := q.Tenant(tn)
				require.Equal(t, m.counter[tn], s.Counter, "seed %d op %d tenant %s", seed, op, tn)
			}
		}
	}
}
