package fairqueue

import "time"

// Pop releases the next item at time now (read on the clock Arrival is):
// an overdue item if an aging slot is due, else the oldest item of the
// backlogged tenant with the smallest counter in the highest class with
// waiting items. It reports false when nothing waits.
func (q *Queue[V]) Pop(now time.Time) (*Entry[V], bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return nil, false
	}
	e := q.overdueLocked(now)
	if e != nil {
		q.sinceAged = 0
		q.counts.Aged++
	} else {
		e = q.fairestLocked()
		q.sinceAged = min(q.sinceAged+1, q.cfg.AgingPeriod)
	}
	q.unlinkLocked(e)
	e.state = stateReleased
	q.counts.Released++
	if q.cfg.ChargeOnRelease {
		t := e.flow.t
		e.charged = q.cost(e.req.InputTokens, e.req.OutputTokens) / t.weight
		q.setCounterLocked(t, t.counter+e.charged)
	}
	return e, true
}

// Peek returns what Pop(now) would release, without releasing it; false
// when nothing waits.
func (q *Queue[V]) Peek(now time.Time) (*Entry[V], bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return nil, false
	}
	if e := q.overdueLocked(now); e != nil {
		return e, true
	}
	return q.fairestLocked(), true
}

// overdueLocked returns, when an aging slot is due, the overdue item with
// the earliest deadline: each class's oldest item has its class's earliest
// deadline, so it is enough to look at those.
func (q *Queue[V]) overdueLocked(now time.Time) *Entry[V] {
	if q.sinceAged < q.cfg.AgingPeriod-1 {
		return nil
	}
	var best *Entry[V]
	for i := range q.classes {
		e := q.classes[i].items.first
		if e == nil || e.deadline.IsZero() || !now.After(e.deadline) {
			continue
		}
		if best == nil || e.deadline.Before(best.deadline) || (e.deadline.Equal(best.deadline) && e.seq < best.seq) {
			best = e
		}
	}
	return best
}

// fairestLocked returns the head of the smallest-counter flow of the
// highest class with waiting items.
func (q *Queue[V]) fairestLocked() *Entry[V] {
	for c := NumClasses - 1; c >= 0; c-- {
		if h := q.classes[c].heap; len(h) > 0 {
			return h[0].items.first
		}
	}
	return nil
}

// Remove takes a waiting entry out of the queue (its request's context
// ended) in O(log n). It reports false if e was no longer waiting: released,
// evicted or removed before.
func (q *Queue[V]) Remove(e *Entry[V]) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e == nil || e.state != stateWaiting {
		return false
	}
	q.unlinkLocked(e)
	e.state = stateRemoved
	q.counts.Removed++
	return true
}

// Served charges tokens served to tenant to its virtual counter, divided
// by its weight. Call it as tokens are produced (VTC), for requests that
// were queued and for those that were not; with ChargeOnRelease, use
// Settle for released entries instead.
func (q *Queue[V]) Served(tenant string, inputTokens, outputTokens int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	t := q.tenantLocked(tenant)
	q.setCounterLocked(t, t.counter+q.cost(inputTokens, outputTokens)/t.weight)
}

// Settle records the exact usage of a released entry once it has run (or
// was cancelled, with what was generated): it charges the usage and takes
// back what was charged at release, if anything. It reports false, and
// charges nothing, unless e was released and not yet settled.
func (q *Queue[V]) Settle(e *Entry[V], inputTokens, outputTokens int64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if e == nil || e.state != stateReleased {
		return false
	}
	e.state = stateSettled
	t := e.flow.t
	q.setCounterLocked(t, t.counter+q.cost(inputTokens, outputTokens)/t.weight-e.charged)
	return true
}

// Forget drops tenant's counter, as when its Tenant object is deleted; a
// tenant seen again starts from the lift. It reports false, and keeps the
// tenant, while the tenant has waiting items.
func (q *Queue[V]) Forget(tenant string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	t, ok := q.tenants[tenant]
	if !ok {
		return true
	}
	if t.waiting > 0 {
		return false
	}
	delete(q.tenants, tenant)
	return true
}
