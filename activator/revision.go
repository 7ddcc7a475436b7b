package activator

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

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
	// ch receives the assigned pod, or nil when every ready pod has been
	// tried (buffered, cap 1).
	ch chan *scheduler.Pod
}

// revision holds the ready pods of one replica set, their prefix index, the
// scheduling profile and the requests buffered for it. Pods are handed to
// waiters FIFO the moment one is eligible: when pods appear and when a
// request finishes.
type revision struct {
	key      fleet.Key
	onDemand func(fleet.Key)
	index    *kvindex.Index
	// follow subscribes to a pod's stats stream until ctx ends; nil when
	// the activator does not follow queue-proxies.
	follow func(ctx context.Context, p *scheduler.Pod, index *kvindex.Index)
	ctx    context.Context // parent of the pods' subscriptions
	// outlier configures ejection of failing pods (outlier.go).
	outlier outlierConfig
	// prepares is whether the profile has a PreScore phase (set with it),
	// read without the lock on every request.
	prepares atomic.Bool

	mu         sync.Mutex
	capacity   int // per-pod in-flight limit; 0 = unlimited
	profile    *scheduler.Profile
	routingKey string // the routing spec the profile was built from
	pods       []*scheduler.Pod
	subs       map[string]context.CancelFunc
	waiters    []*waiter
	inFlight   int
	lastActive time.Time
	health     map[*scheduler.Pod]*podHealth // outlier state of pods that failed
	ejections  uint64                        // ejections so far
	rr         uint64                        // round robin of anyReadyAddress

	// cardMemo remembers its engines' model cards (models.go), so that a
	// revision at zero still shows them.
	cardMemo cardMemo
}

func newRevision(ctx context.Context, key fleet.Key, log *slog.Logger, onDemand func(fleet.Key),
	follow func(context.Context, *scheduler.Pod, *kvindex.Index), outlier outlierConfig) *revision {
	return &revision{key: key, onDemand: onDemand, follow: follow, ctx: ctx, outlier: outlier,
		index: kvindex.New(log.With(slog.String("revision", key.Revision))), subs: map[string]context.CancelFunc{},
		lastActive: time.Now(), health: map[*scheduler.Pod]*podHealth{}}
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
	return Load{InFlight: r.inFlight, Buffered: len(r.waiters), Ready: len(r.pods), LastActive: r.lastActive}
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
		if r.follow != nil {
			ctx, cancel := context.WithCancel(r.ctx)
			r.subs[p.Name] = cancel
			go r.follow(ctx, p, r.index)
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
// by it, not ejected (unless every pod is), and under the capacity.
func (r *revision) eligibleLocked(exclude map[string]bool, buf []*scheduler.Pod) []*scheduler.Pod {
	skipEjected, now := r.skipEjectedLocked()
	for _, p := range r.pods {
		if exclude[p.Name] || (r.capacity > 0 && p.InFlight >= r.capacity) || (skipEjected && r.ejectedLocked(p, now)) {
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

// failExhaustedLocked answers the buffered requests that have no pod left
// to try (pods left or were ejected while they waited).
func (r *revision) failExhaustedLocked() {
	kept := r.waiters[:0]
	for _, w := range r.waiters {
		if r.exhaustedLocked(w.exclude) {
			w.ch <- nil
			continue
		}
		kept = append(kept, w)
	}
	clear(r.waiters[len(kept):])
	r.waiters = kept
}

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
	if len(r.waiters) == 0 && !r.exhaustedLocked(exclude) {
		pods = r.eligibleLocked(exclude, nil)
	}
	r.mu.Unlock()
	if len(pods) == 0 {
		return nil
	}
	return prof.PreScore(ctx, req, pods)
}

// takeLocked picks a pod for a request among the eligible ones and counts
// it in flight; nil when none is eligible. prepared is what preScore
// returned for the request.
func (r *revision) takeLocked(req *scheduler.Request, prepared *scheduler.Cycle, exclude map[string]bool) *scheduler.Pod {
	var buf [16]*scheduler.Pod
	cands := r.eligibleLocked(exclude, buf[:0])
	if len(cands) == 0 {
		return nil
	}
	p := r.profile.PickPrepared(req, prepared, cands)
	p.InFlight++
	r.inFlight++
	return p
}

func (r *revision) handOffLocked() {
	for len(r.waiters) > 0 {
		w := r.waiters[0]
		p := r.takeLocked(w.req, w.prepared, w.exclude)
		if p == nil {
			// The head may be waiting for a pod it has not tried; let a
			// later waiter with no exclusions go ahead rather than stall.
			if !r.handOffOthersLocked() {
				return
			}
			continue
		}
		w.ch <- p
		r.waiters = r.waiters[1:]
	}
}

// handOffOthersLocked serves the first waiter after the head that can be
// served; it reports whether it served one.
func (r *revision) handOffOthersLocked() bool {
	for i := 1; i < len(r.waiters); i++ {
		w := r.waiters[i]
		if p := r.takeLocked(w.req, w.prepared, w.exclude); p != nil {
			w.ch <- p
			r.waiters = append(r.waiters[:i], r.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// tryAcquire returns a pod for one request if one is eligible now, else nil
// (it never buffers).
func (r *revision) tryAcquire(ctx context.Context, req *scheduler.Request, exclude map[string]bool) *scheduler.Pod {
	prepared := r.preScore(ctx, req, exclude)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastActive = time.Now()
	if len(r.waiters) > 0 {
		return nil
	}
	return r.takeLocked(req, prepared, exclude)
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

// acquire returns a pod for one request, buffering up to timeout when none
// is eligible. release must be called with the pod when the request ends.
func (r *revision) acquire(ctx context.Context, req *scheduler.Request, exclude map[string]bool, maxBuffered int, timeout time.Duration) (*scheduler.Pod, error) {
	prepared := r.preScore(ctx, req, exclude)
	r.mu.Lock()
	r.lastActive = time.Now()
	if r.exhaustedLocked(exclude) {
		r.mu.Unlock()
		return nil, errAllTried
	}
	if len(r.waiters) == 0 {
		if p := r.takeLocked(req, prepared, exclude); p != nil {
			r.mu.Unlock()
			return p, nil
		}
	}
	if len(r.waiters) >= maxBuffered {
		r.mu.Unlock()
		return nil, ErrBufferFull
	}
	w := &waiter{req: req, prepared: prepared, exclude: exclude, ch: make(chan *scheduler.Pod, 1)}
	r.waiters = append(r.waiters, w)
	r.handOffLocked()
	r.mu.Unlock()
	if r.onDemand != nil && len(w.ch) == 0 {
		r.onDemand(r.key)
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	select {
	case p := <-w.ch:
		if p == nil {
			return nil, errAllTried
		}
		return p, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = ErrBufferTimeout
	}
	r.mu.Lock()
	for i, x := range r.waiters {
		if x == w {
			r.waiters = append(r.waiters[:i], r.waiters[i+1:]...)
			r.mu.Unlock()
			return nil, err
		}
	}
	r.mu.Unlock()
	// Assigned concurrently with the timeout: give the pod back.
	if p := <-w.ch; p != nil {
		r.release(p, outcomeNone)
	}
	return nil, err
}

// release gives back a pod acquired for a request and records what the
// request showed of it; it returns the pod's ejection when this outcome
// caused one (for the caller to log, outside the lock).
func (r *revision) release(p *scheduler.Pod, o outcome) *ejection {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.InFlight--
	r.inFlight--
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
// feeds its Stat and the revision's prefix index.
func followStats(log *slog.Logger) func(context.Context, *scheduler.Pod, *kvindex.Index) {
	return func(ctx context.Context, p *scheduler.Pod, index *kvindex.Index) {
		stats.Subscribe(ctx, p.Address, func(m stats.Message) {
			if m.Stat != nil {
				p.SetStat(m.Stat)
			}
			if m.KV != nil {
				ev := *m.KV
				ev.Pod = p.Name // the activator's name for the pod, whatever the queue-proxy calls itself
				index.Apply(ev)
			}
		}, log.With(slog.String("pod", p.Name)))
	}
}
