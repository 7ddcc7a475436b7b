// Package fairqueue holds Queue, the fair, prioritised queue requests wait in
// when every pod of a revision is saturated: released one at a time as
// capacity frees, by priority class first and, within a class, by a virtual
// token counter per tenant (Sheng et al., "Fairness in Serving Large
// Language Models", OSDI 2024: VTC), with a bounded wait for every class and
// shedding under overload.
//
// # Release order
//
// Each item carries a tenant, a priority class (Critical > Standard >
// Sheddable), the tenant's weight (>= 1), an estimated cost (input tokens
// plus expected output tokens), an arrival time and an opaque value. Pop
// releases, unless an aging slot is due (below), from the highest class with
// waiting items: among that class's backlogged tenants (those with waiting
// items of the class) the one with the smallest counter, ties to the tenant
// with fewer waiting items of the class (a newcomer lifted to the smallest
// counter goes before the backlog it was lifted to), then to the one whose
// oldest waiting item arrived first; within a tenant, first in first
// out.
//
// A tenant's counter is the tokens served to it, weighted by
// InputTokenCost and OutputTokenCost, divided by its weight. It moves in two
// ways, pick one per deployment:
//   - Served(tenant, in, out) as tokens are produced or when a request ends,
//     as VTC does (Config.ChargeOnRelease false); Settle(entry, in, out) is
//     then the same as Served for the entry's tenant.
//   - Config.ChargeOnRelease: Pop charges the item's estimate at release,
//     and Settle(entry, in, out) replaces it with the exact usage once known
//     (for a cancelled request, with what was generated).
//
// When a tenant becomes backlogged in a class (its first waiting item of the
// class after having none), its counter is lifted to at least the smallest
// counter among the class's backlogged tenants, or, when there are none, to
// the counter of the last tenant whose items of the class ran out: credit is
// not hoarded while idle, so a newcomer gets its share, not a burst. There is
// one counter per tenant, whatever the class of its items.
//
// Between aging slots, two tenants backlogged in the same class keep
// counters within one release's charge of each other (with ChargeOnRelease,
// the largest estimate over the weight, then moved by Settle by the
// estimate's error; with Served only, plus the tokens of requests still
// running), so served tokens split by weight. Forget drops a tenant's
// counter (a deleted Tenant); counters are kept otherwise.
//
// # Aging: a bounded wait for every class
//
// Let A_c = MaxWait[c] (> 0; 0 turns aging off for c) and E = AgingPeriod.
// An item x of class c is overdue once now > d_x = Arrival + A_c. At most one
// release in every E is an aged release, and while any item is overdue every
// E-th release is: it takes the overdue item with the earliest deadline
// (ties to the earlier pushed), whatever its class or tenant's counter. So
// the highest class with waiting items still receives at least (E-1)/E of
// releases, and aged releases are charged like any other, so VTC makes up
// for them.
//
// Bound. Let K_x be the number of other items waiting at the first release
// after d_x whose deadlines are <= d_x, and R the longest gap between two
// releases while items wait (the time for one unit of capacity to free).
// Then x leaves the queue (released, or evicted or removed) by the
// E*(K_x+1)-th release after d_x, so its wait is at most
//
//	W_x <= A_c + E * (K_x + 1) * R <= A_c + E * N * R
//
// where N is MaxWaiting (K_x < N), or the sum of MaxWaitingPerClass over the
// aging classes if smaller. This holds for every class, under a continuous
// flood of any other, provided Arrival is read from the clock Pop's now is
// and does not decrease from one Push to the next.
//
// # Overload
//
// MaxWaiting bounds waiting items in total and MaxWaitingPerClass per class.
// A newcomer whose class is at its own bound is refused (ErrClassFull).
// When the total is reached, a newcomer evicts the oldest waiting item of
// the lowest class present if that class is lower than its own; otherwise
// it is refused (ErrFull). So a sheddable newcomer is refused at once, and a
// higher class sheds sheddable items first, then the next class up. Refused
// and evicted items go back to the caller, which answers 429 with
// Retry-After.
//
// # Use in the activator
//
// A Queue is safe for concurrent use behind one mutex, holds no timers and
// calls nothing while locked; Push, Pop and Remove are O(log n) in the
// number of backlogged tenants (a heap per class over tenants, a linked FIFO
// per tenant and class) and allocate only the Entry. A waiter pushes a
// Request whose Value is its hand-off channel, then waits on the channel or
// its context; when its context ends it calls Remove, and if Remove reports
// false it was released meanwhile and must give back what it was handed.
// Whoever frees capacity calls Pop(now) and hands the released entry's
// Value a pod outside the lock; evicted entries are answered 429 the same
// way. Stats and Tenant expose waiting items per class and per tenant and
// cumulative counts for metrics.
package fairqueue
