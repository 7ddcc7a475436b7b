package fairqueue

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrFull is returned by Push when the newcomer is refused because the queue
// is at MaxWaiting and holds nothing of a lower class to shed. The caller
// answers 429 with Retry-After.
var ErrFull = errors.New("fairqueue: queue full")

// ErrClassFull is returned by Push when the newcomer's class is at its
// MaxWaitingPerClass. It wraps ErrFull.
var ErrClassFull = fmt.Errorf("%w: class at its limit", ErrFull)

// DefaultAgingPeriod is the AgingPeriod used when Config leaves it zero.
const DefaultAgingPeriod = 8

// Config tunes a Queue. The zero Config is valid: unbounded, no aging,
// input and output tokens costing 1 each, charged only through Served and
// Settle.
type Config struct {
	// MaxWaiting bounds the waiting items of all classes together; 0 is
	// unbounded. When it is reached, a newcomer evicts the oldest item of
	// the lowest class present if that class is lower than its own, and is
	// refused (ErrFull) otherwise.
	MaxWaiting int
	// MaxWaitingPerClass bounds each class's waiting items; 0 is unbounded.
	// A newcomer whose class is at its bound is refused (ErrClassFull).
	MaxWaitingPerClass [NumClasses]int
	// MaxWait is, per class, how long an item may wait before it is
	// overdue and released by aging ahead of higher classes and of fairer
	// tenants (see the package doc for the bound). 0 disables aging for
	// the class.
	MaxWait [NumClasses]time.Duration
	// AgingPeriod is E in the package doc: at most one release in every E
	// goes to an overdue item, and one in every E does while any item is
	// overdue. 0 means DefaultAgingPeriod; 1 releases overdue items first.
	AgingPeriod int
	// InputTokenCost and OutputTokenCost weigh a token in the virtual
	// counter (0 means 1). Sheng et al. use 1 and 2.
	InputTokenCost, OutputTokenCost float64
	// ChargeOnRelease charges each item's estimate (InputTokens +
	// OutputTokens) to its tenant when it is released; Settle later
	// replaces the estimate with the exact usage. Without it, counters
	// move only through Served (as tokens are produced, as in VTC) and
	// Settle.
	ChargeOnRelease bool
}

// DefaultConfig is a starting point for the activator: 1,000 waiting items,
// critical items overdue after 5 s, standard after 10 s, sheddable after
// 30 s, and the estimate charged at release.
func DefaultConfig() Config {
	return Config{
		MaxWaiting:      1000,
		MaxWait:         [NumClasses]time.Duration{Sheddable: 30 * time.Second, Standard: 10 * time.Second, Critical: 5 * time.Second},
		AgingPeriod:     DefaultAgingPeriod,
		InputTokenCost:  1,
		OutputTokenCost: 1,
		ChargeOnRelease: true,
	}
}

// Request is what is queued: who asks, how urgently, at what expected
// cost, since when, and the caller's opaque value (typically the channel
// its waiter is handed a pod on).
type Request[V any] struct {
	// Tenant identifies the tenant; every tenant has one virtual counter.
	Tenant string
	// Class is the request's priority class.
	Class Class
	// Weight is the tenant's share under contention (spec.weight); values
	// below 1 count as 1. The latest pushed weight is the tenant's.
	Weight int
	// InputTokens is the prompt's token count.
	InputTokens int64
	// OutputTokens is the expected output (max_tokens or a prediction).
	OutputTokens int64
	// Arrival is when the request arrived, on the clock Pop's now is read
	// from; it should not decrease from one Push to the next.
	Arrival time.Time
	// Value is the caller's, returned untouched.
	Value V
}

type entryState uint8

const (
	stateWaiting entryState = iota
	stateReleased
	stateSettled
	stateRemoved
	stateEvicted
)

// Entry is a pushed Request: the handle to Remove or Settle it by. Its
// Request never changes, so Request and Value may be read without a lock.
type Entry[V any] struct {
	req      Request[V]
	seq      uint64
	deadline time.Time // Arrival + MaxWait[class]; zero when the class does not age
	flow     *flow[V]
	links    [numLists]link[V]
	charged  float64 // charged to the tenant at release (ChargeOnRelease)
	state    entryState
}

// Request returns the pushed request.
func (e *Entry[V]) Request() Request[V] { return e.req }

// Value returns the pushed request's value.
func (e *Entry[V]) Value() V { return e.req.Value }

// flow is one tenant's FIFO of waiting items of one class.
type flow[V any] struct {
	t     *tenant[V]
	items list[V]
	n     int
	idx   int // in its class's heap; -1 when not backlogged
}

// tenant holds a tenant's virtual counter and its flows.
type tenant[V any] struct {
	weight  float64
	counter float64 // weighted tokens served
	waiting int
	flows   [NumClasses]flow[V]
}

// class is one priority class: its backlogged flows by counter and all its
// items in push order (for aging and eviction).
type class[V any] struct {
	heap     flowHeap[V]
	items    list[V] // in push order
	n        int
	lastLeft float64 // counter of the last tenant whose flow emptied
	hasLeft  bool
}

// Queue is a fair, prioritised queue; see the package doc. It is safe for
// concurrent use; it never calls out while holding its lock.
type Queue[V any] struct {
	cfg Config

	mu        sync.Mutex
	tenants   map[string]*tenant[V]
	classes   [NumClasses]class[V]
	n         int
	seq       uint64
	sinceAged int // releases since the last aged one, saturating at AgingPeriod
	counts    Counts
}

// New returns an empty Queue.
func New[V any](cfg Config) *Queue[V] {
	if cfg.AgingPeriod <= 0 {
		cfg.AgingPeriod = DefaultAgingPeriod
	}
	if cfg.InputTokenCost <= 0 {
		cfg.InputTokenCost = 1
	}
	if cfg.OutputTokenCost <= 0 {
		cfg.OutputTokenCost = 1
	}
	// The first overdue item need not wait for E-1 normal releases.
	return &Queue[V]{cfg: cfg, tenants: map[string]*tenant[V]{}, sinceAged: cfg.AgingPeriod}
}

// Push queues r. When the queue is full it either evicts one waiting item
// of a lower class, returned as evicted (its waiter must be answered 429),
// or refuses r with an error wrapping ErrFull, returning no entry.
func (q *Queue[V]) Push(r Request[V]) (e, evicted *Entry[V], err error) {
	if int(r.Class) >= NumClasses {
		return nil, nil, fmt.Errorf("%w: %d", ErrBadClass, r.Class)
	}
	e = &Entry[V]{req: r}
	if d := q.cfg.MaxWait[r.Class]; d > 0 {
		e.deadline = r.Arrival.Add(d)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	evicted, err = q.admitLocked(r.Class)
	if err != nil {
		q.counts.Refused++
		return nil, nil, err
	}
	q.linkLocked(e)
	q.counts.Pushed++
	return e, evicted, nil
}

// admitLocked makes room for a newcomer of class c, evicting if it must.
func (q *Queue[V]) admitLocked(c Class) (*Entry[V], error) {
	if limit := q.cfg.MaxWaitingPerClass[c]; limit > 0 && q.classes[c].n >= limit {
		return nil, fmt.Errorf("%w (%s, %d waiting)", ErrClassFull, c, limit)
	}
	if q.cfg.MaxWaiting <= 0 || q.n < q.cfg.MaxWaiting {
		return nil, nil
	}
	for low := range c { // lower classes only, lowest first
		if v := q.classes[low].items.first; v != nil {
			q.unlinkLocked(v)
			v.state = stateEvicted
			q.counts.Evicted++
			return v, nil
		}
	}
	return nil, fmt.Errorf("%w (%d waiting)", ErrFull, q.cfg.MaxWaiting)
}

// linkLocked appends e to its tenant's flow and its class, lifting the
// tenant's counter if the flow was idle.
func (q *Queue[V]) linkLocked(e *Entry[V]) {
	t := q.tenantLocked(e.req.Tenant)
	t.weight = max(1, float64(e.req.Weight))
	q.seq++
	e.seq = q.seq
	c := &q.classes[e.req.Class]
	f := &t.flows[e.req.Class]
	e.flow = f
	if f.n == 0 {
		// Newly backlogged: no credit hoarded while idle (VTC's lift).
		floor, ok := c.lastLeft, c.hasLeft
		if len(c.heap) > 0 {
			floor, ok = c.heap[0].t.counter, true
		}
		if ok && t.counter < floor {
			q.setCounterLocked(t, floor)
		}
	}
	f.items.pushBack(e, inFlow)
	c.items.pushBack(e, inClass)
	f.n++
	t.waiting++
	c.n++
	q.n++
	if f.idx < 0 {
		c.heap.push(f)
	} else {
		c.heap.fix(f.idx) // the tie-break (waiting items) changed
	}
}

// unlinkLocked takes a waiting e out of its flow and class.
func (q *Queue[V]) unlinkLocked(e *Entry[V]) {
	f, c := e.flow, &q.classes[e.req.Class]
	f.items.remove(e, inFlow)
	c.items.remove(e, inClass)
	f.n--
	f.t.waiting--
	c.n--
	q.n--
	switch {
	case f.n == 0:
		c.heap.remove(f.idx)
		c.lastLeft, c.hasLeft = f.t.counter, true
	default:
		c.heap.fix(f.idx) // the tie-breaks (waiting items, head's arrival) changed
	}
}

// tenantLocked returns id's tenant, creating it with weight 1.
func (q *Queue[V]) tenantLocked(id string) *tenant[V] {
	if t, ok := q.tenants[id]; ok {
		return t
	}
	t := &tenant[V]{weight: 1}
	for i := range t.flows {
		t.flows[i] = flow[V]{t: t, idx: -1}
	}
	q.tenants[id] = t
	return t
}

// setCounterLocked sets t's counter and restores its flows' heap order.
func (q *Queue[V]) setCounterLocked(t *tenant[V], v float64) {
	t.counter = v
	for i := range t.flows {
		if f := &t.flows[i]; f.idx >= 0 {
			q.classes[i].heap.fix(f.idx)
		}
	}
}

func (q *Queue[V]) cost(input, output int64) float64 {
	return float64(input)*q.cfg.InputTokenCost + float64(output)*q.cfg.OutputTokenCost
}
