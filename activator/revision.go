package activator

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fairqueue"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// Errors of Acquire.
var (
	ErrBufferFull    = errors.New("too many requests are buffered for this revision")
	ErrBufferTimeout = errors.New("no replica became ready in time")
	// errAllTried: every ready replica has been tried by this request (or
	// is ejected); buffering would only wait for the timeout.
	errAllTried = errors.New("every ready replica has been tried")
)

// waiter is a buffered request.
type waiter struct {
	req      *scheduler.Request
	prepared *scheduler.Cycle // what the profile's PreScore prepared, or nil
	exclude  map[string]bool
	tk       waitTicket // how it waits: its tenant, class and estimated tokens
	// ch receives the request's handoff once (buffered, cap 1, so a send
	// under the lock never blocks).
	ch chan handoff
	// entry is the request's place in the fair queue; nil for a retry,
	// which waits in the revision's retries instead.
	entry *fairqueue.Entry[*waiter]
}

// revision holds the ready pods of one replica set, their prefix index, the
// scheduling profile and the requests buffered for it. Pods are handed to
// waiters the moment one is eligible (when pods appear, when a request
// finishes, when a pod's stats report un-saturates it): first to retries in
// arrival order, then to the fair queue in its release order (fairness.go).
type revision struct {
	key      fleet.Key
	onDemand func(fleet.Key)
	index    *kvindex.Index
	// follow subscribes to a pod's stats stream until ctx ends; nil when
	// the activator does not follow queue-proxies.
	follow follower
	ctx    context.Context // parent of the pods' subscriptions
	// outlier configures ejection of failing pods (outlier.go).
	outlier outlierConfig
	// prepares is whether the profile has a PreScore phase (set with it),
	// read without the lock on every request.
	prepares atomic.Bool
	// queueing is how requests wait (fairness.go); set before the
	// revision is shared, read without the lock.
	queueing queueing
	// queue holds the requests waiting for their first pod; its Push, Pop
	// and Remove are called under mu, its Settle and Served without.
	queue *fairqueue.Queue[*waiter]

	mu         sync.Mutex
	capacity   int // per-pod in-flight limit; 0 = unlimited
	profile    *scheduler.Profile
	routingKey string // the routing spec the profile was built from
	pods       []*scheduler.Pod
	cands      []*scheduler.Pod // scratch of the eligible pods of one decision
	subs       map[string]context.CancelFunc
	retries    []*waiter                   // requests retried after a failure, waiting, oldest first
	queued     int                         // requests waiting in queue
	loads      map[*scheduler.Pod]*podLoad // since each pod's last report; with stats saturation only
	use        map[string]*tenantUse       // tenants' requests in flight and last arrival
	useSwept   time.Time                   // when idle tenants were last dropped from use
	inFlight   int
	lastActive time.Time
	health     map[*scheduler.Pod]*podHealth // outlier state of pods that failed
	ejections  uint64                        // ejections so far
	rr         uint64                        // round robin of anyReadyAddress

	// cardMemo remembers its engines' model cards (models.go), so that a
	// revision at zero still shows them.
	cardMemo cardMemo
}

// follower follows a pod's stats stream until ctx ends: it feeds index
// with the pod's KV events and hands each stats report to setStat.
type follower func(ctx context.Context, p *scheduler.Pod, index *kvindex.Index, setStat func(*stats.Stat))

// newRevision returns a revision with no pods whose requests wait as
// queueingOf(DefaultConfig()) says; withQueueing changes that before the
// revision is shared.
func newRevision(ctx context.Context, key fleet.Key, log *slog.Logger, onDemand func(fleet.Key),
	follow follower, outlier outlierConfig) *revision {
	r := &revision{key: key, onDemand: onDemand, follow: follow, ctx: ctx, outlier: outlier,
		index: kvindex.New(log.With(slog.String("revision", key.Revision))), subs: map[string]context.CancelFunc{},
		lastActive: time.Now(), health: map[*scheduler.Pod]*podHealth{}, loads: map[*scheduler.Pod]*podLoad{},
		use: map[string]*tenantUse{}}
	return r.withQueueing(queueingOf(DefaultConfig()))
}

// withQueueing sets how the revision's requests wait; only before the
// revision is shared.
func (r *revision) withQueueing(q queueing) *revision {
	r.queueing = q
	r.queue = fairqueue.New[*waiter](q.fair)
	return r
}

// Load is what the scaler reads of a revision.
type Load struct {
	InFlight   int       // requests forwarded and not finished
	Buffered   int       // requests waiting for a replica
	Ready      int       // ready endpoints
	LastActive time.Time // last time a request arrived or finished
}

func (r *revision) load() Load {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Load{InFlight: r.inFlight, Buffered: r.waitingLocked(), Ready: len(r.pods), LastActive: r.lastActive}
}

// configure sets the per-pod limit and, when the routing changed, the
// profile (a rebuilt profile starts with fresh plugin state).
func (r *revision) configure(capacity int, routingKey string, build func() *scheduler.Profile) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.capacity = capacity
	if r.profile == nil || r.routingKey != routingKey {
		if p := build(); p != nil {
			r.profile, r.routingKey = p, routingKey
			r.prepares.Store(p.Prepares())
		}
	}
	r.handOffLocked()
}

// setEndpoints replaces the ready set, keeping the state of pods that stay,
// and hands new capacity to buffered requests. It returns the addresses of
// the pods that left.
func (r *revision) setEndpoints(eps []fleet.Endpoint) (gone []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := make(map[string]*scheduler.Pod, len(r.pods))
	for _, p := range r.pods {
		old[p.Name] = p
	}
	next := make([]*scheduler.Pod, 0, len(eps))
	for _, e := range eps {
		if cur, ok := old[e.Name]; ok && cur.Address == e.Address {
			// Only the variant can differ. Name and Address are read
			// without the lock by the pod's stats follower: never rewrite
			// them.
			cur.Variant = e.Variant
			next = append(next, cur)
			delete(old, e.Name)
			continue
		}
		p := scheduler.NewPod(e)
		if cur, ok := old[e.Name]; ok { // same name, new address: a new pod
			r.dropLocked(cur)
			gone = append(gone, cur.Address)
			delete(old, e.Name)
		}
		p.Slot = r.index.AddPod(p.Name)
		if r.queueing.sat.on() {
			r.loads[p] = &podLoad{}
		}
		if r.follow != nil {
			ctx, cancel := context.WithCancel(r.ctx)
			r.subs[p.Name] = cancel
			go r.follow(ctx, p, r.index, func(s *stats.Stat) { r.setStat(p, s) })
		}
		next = append(next, p)
	}
	for _, p := range old {
		r.dropLocked(p)
		gone = append(gone, p.Address)
	}
	r.pods = next
	r.failExhaustedLocked()
	r.handOffLocked()
	return gone
}

func (r *revision) dropLocked(p *scheduler.Pod) {
	if cancel, ok := r.subs[p.Name]; ok {
		cancel()
		delete(r.subs, p.Name)
	}
	delete(r.health, p)
	delete(r.loads, p)
	r.index.RemovePod(p.Name)
}

// pod returns a ready pod by name.
func (r *revision) pod(name string) *scheduler.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// skipEjectedLocked reports whether picking must pass over ejected pods
// (some pod is ejected, but not every one: panic), and the time to judge
// them at. Without outlier state it reads no clock.
func (r *revision) skipEjectedLocked() (bool, time.Time) {
	if len(r.health) == 0 {
		return false, time.Time{}
	}
	now := r.outlier.now()
	return !r.panicLocked(now), now
}

// eligibleLocked returns the pods a request may be sent to now: not tried
// by it, not ejected (unless every pod is), and not saturated (under the
// capacity, and under the stats thresholds when set: fairness.go).
func (r *revision) eligibleLocked(exclude map[string]bool, reserve int, buf []*scheduler.Pod) []*scheduler.Pod {
	skipEjected, now := r.skipEjectedLocked()
	for _, p := range r.pods {
		if exclude[p.Name] || (r.capacity > 0 && p.InFlight >= r.capacity-reserve) || (skipEjected && r.ejectedLocked(p, now)) ||
			r.statSaturatedLocked(p) {
			continue
		}
		buf = append(buf, p)
	}
	return buf
}

// exhaustedLocked reports whether a request that tried the pods of exclude
// has none left: there are ready pods, and each was tried or is ejected.
// Such a request is answered at once, not buffered.
func (r *revision) exhaustedLocked(exclude map[string]bool) bool {
	if len(exclude) == 0 || len(r.pods) == 0 {
		return false
	}
	skipEjected, now := r.skipEjectedLocked()
	for _, p := range r.pods {
		if !exclude[p.Name] && !(skipEjected && r.ejectedLocked(p, now)) {
			return false
		}
	}
	return true
}

// failExhaustedLocked answers the buffered retries that have no pod left
// to try (pods left or were ejected while they waited); requests of the
// fair queue have tried none.
func (r *revision) failExhaustedLocked() {
	kept := r.retries[:0]
	for _, w := range r.retries {
		if r.exhaustedLocked(w.exclude) {
			w.ch <- handoff{err: errAllTried}
			continue
		}
		kept = append(kept, w)
	}
	clear(r.retries[len(kept):])
	r.retries = kept
}

// waitingLocked is the number of buffered requests.
func (r *revision) waitingLocked() int { return r.queued + len(r.retries) }

// preScore runs, before a request's decision and without the lock, the
// I/O its profile's plugins need (scheduler.Profile.PreScore) over the pods
// eligible for it now. It asks nothing when the request cannot be picked
// at once (others wait before it, it tried every pod, none is eligible):
// a request that waits is handed a pod later on what the plugins know
// without asking (the oracle: its speculation alone). It returns nil at
// the cost of one atomic load when no plugin prepares.
func (r *revision) preScore(ctx context.Context, req *scheduler.Request, exclude map[string]bool) *scheduler.Cycle {
	if !r.prepares.Load() {
		return nil
	}
	r.mu.Lock()
	prof := r.profile
	var pods []*scheduler.Pod
	if r.waitingLocked() == 0 && !r.exhaustedLocked(exclude) {
		pods = r.eligibleLocked(exclude, 0, nil)
	}
	r.mu.Unlock()
	if len(pods) == 0 {
		return nil
	}
	return prof.PreScore(ctx, req, pods)
}

// takeLocked picks a pod for a request among the eligible ones and counts
// it in flight; nil when none is eligible. prepared is what preScore
// returned for the request, cost its estimated tokens.
func (r *revision) takeLocked(req *scheduler.Request, prepared *scheduler.Cycle, exclude map[string]bool, tk waitTicket) *scheduler.Pod {
	cands := r.eligibleLocked(exclude, r.reserveLocked(tk), r.cands[:0])
	r.cands = cands[:0]
	if len(cands) == 0 {
		return nil
	}
	return r.pickLocked(req, prepared, cands, tk)
}

// pickLocked picks a pod among cands (not empty) and counts it in flight.
func (r *revision) pickLocked(req *scheduler.Request, prepared *scheduler.Cycle, cands []*scheduler.Pod, tk waitTicket) *scheduler.Pod {
	p := r.profile.PickPrepared(req, prepared, cands)
	p.InFlight++
	r.inFlight++
	if l := r.loads[p]; l != nil {
		l.tokens += tk.cost()
	}
	r.tookLocked(tk)
	return p
}

// handOffLocked hands eligible pods to waiters: first to the retries, in
// arrival order, a retry that cannot use any free pod (it tried them)
// letting a later one go; then to the fair queue, popped only while some
// pod is eligible for a request that tried none, so that what Pop
// releases is always served. Sends never block (cap 1) and call nothing.
func (r *revision) handOffLocked() {
	if len(r.retries) > 0 {
		kept := r.retries[:0]
		for _, w := range r.retries {
			if p := r.takeLocked(w.req, w.prepared, w.exclude, w.tk); p != nil {
				w.ch <- handoff{pod: p}
				continue
			}
			kept = append(kept, w)
		}
		clear(r.retries[len(kept):])
		r.retries = kept
	}
	for r.queued > 0 {
		now := r.queueing.now()
		cands := r.eligibleLocked(nil, r.queueing.headroom, r.cands[:0])
		if len(cands) == 0 && r.queueing.headroom > 0 {
			// Only reserved slots are free: for the next request only if
			// it may use them (reserveLocked).
			if e, ok := r.queue.Peek(now); ok {
				cands = r.eligibleLocked(nil, r.reserveLocked(e.Value().tk), r.cands[:0])
			}
		}
		r.cands = cands[:0]
		if len(cands) == 0 {
			return
		}
		e, ok := r.queue.Pop(now)
		if !ok { // cannot happen: queued counts the queue's items
			r.queued = 0
			return
		}
		r.queued--
		w := e.Value()
		w.ch <- handoff{pod: r.pickLocked(w.req, w.prepared, cands, w.tk)}
	}
}

// tryAcquire returns a pod for one request if one is eligible now, else nil
// (it never buffers).
func (r *revision) tryAcquire(ctx context.Context, req *scheduler.Request, exclude map[string]bool) *scheduler.Pod {
	prepared := r.preScore(ctx, req, exclude)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastActive = time.Now()
	if r.waitingLocked() > 0 {
		return nil
	}
	return r.takeLocked(req, prepared, exclude, waitTicket{})
}

// matchFraction is the share of the request's prompt blocks that pod holds
// according to its queue-proxy's reports (0 when unknown); speculation does
// not count, since the decision that chose the pod just added it.
func (r *revision) matchFraction(req *scheduler.Request, p *scheduler.Pod) float64 {
	hashes := req.Hashes(r.index.BlockSize())
	if len(hashes) == 0 || p.Slot < 0 {
		return 0
	}
	var m [kvindex.MaxPods]int
	r.index.MatchConfirmed(hashes, &m)
	return float64(m[p.Slot]) / float64(len(hashes))
}

// tokenizeAddress returns the address of one of the revision's pods that
// is not ejected, round robin, to ask for a tokenization that any of them
// answers alike; none when the revision has fewer than two pods (routing
// has no choice to make).
func (r *revision) tokenizeAddress() (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pods) < 2 {
		return "", false
	}
	for range len(r.pods) {
		r.rr++
		p := r.pods[r.rr%uint64(len(r.pods))]
		if !r.health[p].ejected(time.Now()) {
			return p.Address, true
		}
	}
	return "", false
}

// acquire returns a pod for one request of the open API, buffering up to
// timeout when none is eligible, refusing it (ErrBufferFull) when
// maxBuffered requests wait already. release must be called with the pod
// when the request ends.
func (r *revision) acquire(ctx context.Context, req *scheduler.Request, exclude map[string]bool, maxBuffered int, timeout time.Duration) (*scheduler.Pod, error) {
	r.mu.Lock()
	full := r.waitingLocked() >= maxBuffered
	r.mu.Unlock()
	if full {
		return nil, ErrBufferFull
	}
	adm, err := r.obtain(ctx, req, exclude, waitTicket{class: fairqueue.Standard, weight: 1}, timeout)
	return adm.pod, err
}

// admitted is what obtain gives a request.
type admitted struct {
	// pod is the request's pod; nil with an error.
	pod *scheduler.Pod
	// entry is the request's entry when the fair queue released it (to
	// settle when it ends); nil when it took a pod at once or was retried.
	entry *fairqueue.Entry[*waiter]
	// queued: the request waited in the fair queue, for waited.
	queued bool
	waited time.Duration
}

// obtain returns a pod for one request, buffering up to timeout when none
// is eligible: a request that tried no pod waits in the fair queue as tk
// says (refused with an error wrapping fairqueue.ErrFull when it is full,
// or evicted later with errShed), a retried one (exclude not empty) among
// the retries, which are served first. release must be called with the
// pod when the request ends.
func (r *revision) obtain(ctx context.Context, req *scheduler.Request, exclude map[string]bool, tk waitTicket, timeout time.Duration) (admitted, error) {
	prepared := r.preScore(ctx, req, exclude)
	r.mu.Lock()
	now := r.queueing.now() // under the lock: arrivals never decrease
	r.lastActive = now
	if r.exhaustedLocked(exclude) {
		r.mu.Unlock()
		return admitted{}, errAllTried
	}
	retry := len(exclude) > 0
	// A request that may use the kept slots takes one at once even while
	// others wait: those waiting for a pod may not (reserveLocked), or the
	// fair queue would have handed it to them.
	if len(r.retries) == 0 && (retry || r.queued == 0 || r.mayUseHeadroomLocked(tk)) {
		if p := r.takeLocked(req, prepared, exclude, tk); p != nil {
			r.mu.Unlock()
			return admitted{pod: p}, nil
		}
	}
	w := &waiter{req: req, prepared: prepared, exclude: exclude, tk: tk, ch: make(chan handoff, 1)}
	if retry {
		r.retries = append(r.retries, w)
	} else {
		e, evicted, err := r.queue.Push(fairqueue.Request[*waiter]{Tenant: tk.tenant, Class: tk.class, Weight: tk.weight,
			InputTokens: tk.input, OutputTokens: tk.output, Arrival: now, Value: w})
		if err != nil {
			r.mu.Unlock()
			return admitted{}, err
		}
		w.entry = e
		r.queued++
		if evicted != nil {
			r.queued--
			evicted.Value().ch <- handoff{err: errShed}
		}
	}
	r.handOffLocked()
	r.mu.Unlock()
	if r.onDemand != nil && len(w.ch) == 0 {
		r.onDemand(r.key)
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	select {
	case g := <-w.ch:
		adm := admitted{pod: g.pod, queued: !retry, waited: r.queueing.now().Sub(now)}
		if g.pod != nil && !retry {
			adm.entry = w.entry
		}
		return adm, g.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = ErrBufferTimeout
	}
	adm := admitted{queued: !retry}
	r.mu.Lock()
	adm.waited = r.queueing.now().Sub(now)
	if r.withdrawLocked(w) {
		r.mu.Unlock()
		return adm, err
	}
	r.mu.Unlock()
	// Handed a grant concurrently with the end of the wait: give the pod
	// back, and what its release charged.
	if g := <-w.ch; g.pod != nil {
		r.release(g.pod, outcomeNone, tk.tenant)
		r.mu.Lock()
		r.queue.Settle(w.entry, 0, 0)
		r.mu.Unlock()
	}
	return adm, err
}

// withdrawLocked takes a waiter that stops waiting out of the fair queue or
// the retries; false when it was handed a handoff meanwhile.
func (r *revision) withdrawLocked(w *waiter) bool {
	if w.entry != nil {
		if r.queue.Remove(w.entry) {
			r.queued--
			return true
		}
		return false
	}
	for i, x := range r.retries {
		if x == w {
			r.retries = append(r.retries[:i], r.retries[i+1:]...)
			return true
		}
	}
	return false
}

// release gives back a pod acquired for a request of tenant (its
// waitTicket's) and records what the request showed of it; it returns the
// pod's ejection when this outcome caused one (for the caller to log,
// outside the lock).
func (r *revision) release(p *scheduler.Pod, o outcome, tenant string) *ejection {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.InFlight--
	r.inFlight--
	r.releasedLocked(tenant)
	r.lastActive = time.Now()
	ej := r.reportLocked(p, o, r.outlier.now())
	if ej != nil {
		r.failExhaustedLocked()
	}
	r.handOffLocked()
	return ej
}

// close stops following the pods' stats streams.
func (r *revision) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, cancel := range r.subs {
		cancel()
		delete(r.subs, name)
	}
}

// followStats is the default follow: the pod's queue-proxy stats stream
// feeds its Stat (through setStat) and the revision's prefix index.
func followStats(log *slog.Logger) follower {
	return func(ctx context.Context, p *scheduler.Pod, index *kvindex.Index, setStat func(*stats.Stat)) {
		stats.Subscribe(ctx, p.Address, func(m stats.Message) {
			if m.Stat != nil {
				setStat(m.Stat)
			}
			if m.KV != nil {
				ev := *m.KV
				ev.Pod = p.Name // the activator's name for the pod, whatever the queue-proxy calls itself
				index.Apply(ev)
			}
		}, log.With(slog.String("pod", p.Name)))
	}
}
