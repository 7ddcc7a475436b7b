package fairqueue

// Counts are a Queue's cumulative event counts, for the caller's metrics.
type Counts struct {
	Pushed   uint64 // items queued
	Released uint64 // items released by Pop, Aged included
	Aged     uint64 // items released by aging
	Evicted  uint64 // waiting items shed for a higher-class newcomer
	Refused  uint64 // newcomers refused because the queue or class was full
	Removed  uint64 // waiting items removed by Remove
}

// Stats is a snapshot of a Queue.
type Stats struct {
	// Waiting is the number of waiting items.
	Waiting int
	// WaitingByClass is Waiting per class.
	WaitingByClass [NumClasses]int
	// BackloggedByClass is, per class, the number of tenants with waiting
	// items of the class.
	BackloggedByClass [NumClasses]int
	// Tenants is the number of tenants with a counter.
	Tenants int
	// Counts are the cumulative event counts.
	Counts Counts
}

// TenantStats is a snapshot of one tenant.
type TenantStats struct {
	// WaitingByClass is the tenant's waiting items per class.
	WaitingByClass [NumClasses]int
	// Counter is the tenant's virtual counter: tokens served (weighted by
	// cost) divided by its weight, lifted as described in the package doc.
	Counter float64
	// Weight is the tenant's latest weight.
	Weight float64
}

// Stats returns a snapshot of q.
func (q *Queue[V]) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := Stats{Waiting: q.n, Tenants: len(q.tenants), Counts: q.counts}
	for i := range q.classes {
		s.WaitingByClass[i] = q.classes[i].n
		s.BackloggedByClass[i] = len(q.classes[i].heap)
	}
	return s
}

// Tenant returns a snapshot of tenant, and false if q has no counter for it.
func (q *Queue[V]) Tenant(tenant string) (TenantStats, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	t, ok := q.tenants[tenant]
	if !ok {
		return TenantStats{}, false
	}
	s := TenantStats{Counter: t.counter, Weight: t.weight}
	for i := range t.flows {
		s.WaitingByClass[i] = t.flows[i].n
	}
	return s, true
}
