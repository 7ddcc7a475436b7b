package activator

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/fairqueue"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// Fair, prioritised queueing. A request waits in the activator when no pod
// of its revision is eligible for it: every pod is saturated (at
// containerConcurrency, or, when Config.SaturationWaiting or
// SaturationKVUsage is set, with its engine's waiting queue or KV-cache
// usage at the threshold), ejected, or gone. Requests that tried no pod yet
// wait in the revision's fairqueue.Queue: by their tenant's priority class
// first and, within a class, by the tenants' virtual token counters
// weighted by spec.weight (pkg/fairqueue). Requests retried after a failure
// were admitted once: they wait apart, in arrival order, and are served
// first. The open API (no Tenant) is one tenant of class standard and
// weight 1, so its requests are served first in, first out.
//
// Each tenant's counter is charged, at release, the request's estimate
// (its prompt's tokens and its output bound) and, when the request ends,
// corrected to the usage the queue-proxy measured (inflight.usage); a
// request that took a pod at once is charged its estimate then, corrected
// to its usage when it ends.

// Errors of waitForPod, besides those of acquire.
var (
	// errShed: the request was evicted from the full fair queue by a
	// request of a higher class.
	errShed = errors.New("shed from the activator's queue for a request of a higher priority class")
	// errQueueRefused: a tenant's request was refused because the fair
	// queue was full (the open API's is ErrBufferFull).
	errQueueRefused = errors.New("too many requests wait for this model")
)

// Reasons of a queue refusal, values of kvasir_tenant_rejected_total's
// reason label (tenant_metrics.go).
const (
	// rejectQueueFull: the fair queue was full and held nothing of a lower
	// class to shed; 429.
	rejectQueueFull = "queue_full"
	// rejectShed: a waiting request was evicted for a higher class; 429.
	rejectShed = "shed"
)

// queueRetryAfter is the Retry-After of a request refused or shed by the
// fair queue.
const queueRetryAfter = time.Second

// handoff is what a waiter is given, once: a pod, or why it gets none
// (errAllTried, errShed).
type handoff struct {
	pod *scheduler.Pod
	err error
}

// waitTicket is how a request waits in the fair queue: its tenant ("" for
// the open API), class and weight, and its estimated tokens.
type waitTicket struct {
	tenant        string
	class         fairqueue.Class
	weight        int
	input, output int64
}

// cost is the ticket's estimated tokens.
func (t waitTicket) cost() int64 { return t.input + t.output }

// saturation is when a pod counts as saturated by what its queue-proxy
// reports; zero fields are off.
type saturation struct {
	waiting int     // engine's waiting queue at or above
	kv      float64 // engine's KV-cache usage (0..1) at or above
}

func (s saturation) on() bool { return s.waiting > 0 || s.kv > 0 }

// podLoad is what a revision handed a pod since its last stats report, so
// that saturation holds between reports rather than letting the whole
// queue through on one report.
type podLoad struct {
	inFlight int   // the pod's InFlight when its last report arrived
	tokens   int64 // estimated tokens of the requests handed to it since
}

// queueing is how a revision's requests wait.
type queueing struct {
	fair fairqueue.Config
	sat  saturation
	// headroom is Config.PriorityHeadroom: slots of each pod (of its
	// containerConcurrency) kept for requests that may use them
	// (reserveLocked).
	headroom int
	now      func() time.Time
}

// Priority headroom. Fair queueing orders the requests that wait, but a
// request that arrives to a revision whose pods are all busy still waits
// for one of them to finish: on an engine running long generations that is
// most of a critical request's TTFT, or of a light tenant's, whatever its
// place in the queue. With Config.PriorityHeadroom H, the last H slots of
// each pod's containerConcurrency C (H < C) go only to requests that may
// use them: a critical request, or a request of a tenant holding fewer
// slots of the revision than its share of them (its weight over the
// weights of the tenants active on the revision, itself included, of
// C × pods; at least 1). So a tenant that has filled its share, however
// heavy, leaves H slots free for the others to start at once; the open API
// (and every request under Config.FirstComeFirstServed) is one tenant
// whose share is everything, so H changes nothing for it. The price is
// throughput: while only tenants past their share run, each pod runs C-H
// requests.

// activeWindow is how long a tenant counts as active on a revision after
// its last request arrived there, for the shares of the headroom.
const activeWindow = 30 * time.Second

// tenantUse is a tenant's use of a revision, for the headroom.
type tenantUse struct {
	inFlight int
	weight   int
	last     time.Time // its last request's arrival
}

// headroomOn reports whether the revision keeps headroom for tenants.
func (r *revision) headroomOn() bool { return r.queueing.headroom > 0 && r.capacity > 1 }

// reserveLocked is how many slots of each pod the request of tk may not
// use: none for a critical request, the open API, or a tenant under its
// share; the headroom (at most C-1) otherwise.
func (r *revision) reserveLocked(tk waitTicket) int {
	if !r.headroomOn() || tk.tenant == "" || tk.class == fairqueue.Critical {
		return 0
	}
	h := min(r.queueing.headroom, r.capacity-1)
	now := r.queueing.now()
	weights, own := 0, max(tk.weight, 1)
	held := 0
	for id, u := range r.use {
		if id == tk.tenant {
			held = u.inFlight
			continue
		}
		if u.inFlight > 0 || now.Sub(u.last) < activeWindow {
			weights += max(u.weight, 1)
		}
	}
	share := max(1, r.capacity*len(r.pods)*own/(weights+own))
	if held < share {
		return 0
	}
	return h
}

// mayUseHeadroomLocked reports whether tk's request may use the kept
// slots of a revision that keeps some.
func (r *revision) mayUseHeadroomLocked(tk waitTicket) bool {
	return r.headroomOn() && tk.tenant != "" && r.reserveLocked(tk) == 0
}

// tookLocked counts a request of tk's tenant in flight, for the headroom.
func (r *revision) tookLocked(tk waitTicket) {
	// Counted whether or not headroom is on now: configure may turn it on
	// while the request runs, and its release is counted either way.
	if tk.tenant == "" {
		return
	}
	u := r.use[tk.tenant]
	if u == nil {
		u = &tenantUse{}
		r.use[tk.tenant] = u
	}
	u.inFlight++
	u.weight = tk.weight
	u.last = r.queueing.now()
}

// releasedLocked counts a request of tenant out of flight, and forgets
// tenants idle past the active window.
func (r *revision) releasedLocked(tenant string) {
	u := r.use[tenant]
	if u == nil {
		return
	}
	u.inFlight = max(u.inFlight-1, 0)
	// Idle tenants are dropped at most once an active window, so that many
	// active tenants do not make every release scan them all.
	if now := r.queueing.now(); u.inFlight == 0 && len(r.use) > 64 && now.Sub(r.useSwept) >= activeWindow {
		r.useSwept = now
		for id, v := range r.use {
			if v.inFlight == 0 && now.Sub(v.last) >= activeWindow {
				delete(r.use, id)
			}
		}
	}
}

// queueingOf is the queueing of a Config: at most MaxBuffered waiting per
// revision, fairqueue's default aging bounds (critical 5 s, standard 10 s,
// sheddable 30 s before a request is overdue) and the estimate charged at
// release.
func queueingOf(c Config) queueing {
	fc := fairqueue.DefaultConfig()
	fc.MaxWaiting = c.MaxBuffered
	fc.ChargeOnRelease = true
	return queueing{fair: fc, sat: saturation{waiting: c.SaturationWaiting, kv: c.SaturationKVUsage},
		headroom: c.PriorityHeadroom, now: time.Now}
}

// statSaturatedLocked reports whether p is saturated by its stats report:
// its engine's waiting queue, plus the requests handed to it since the
// report less those that finished, at or above the threshold; or its
// KV-cache usage, plus the estimated tokens handed to it since over the
// engine's KV capacity in tokens (when reported), at or above the
// threshold. A pod that has not reported is not.
func (r *revision) statSaturatedLocked(p *scheduler.Pod) bool {
	s := r.queueing.sat
	if !s.on() {
		return false
	}
	st := p.Stat()
	if st == nil {
		return false
	}
	var since podLoad
	if l := r.loads[p]; l != nil {
		since = podLoad{inFlight: p.InFlight - l.inFlight, tokens: l.tokens}
	}
	if s.waiting > 0 && st.Engine.Waiting+float64(since.inFlight) >= float64(s.waiting) {
		return true
	}
	if s.kv > 0 {
		kv := st.Engine.KVCacheUsage
		if capacity := st.Engine.NumGPUBlocks * st.Engine.BlockSize; capacity > 0 {
			kv += float64(since.tokens) / float64(capacity)
		}
		if kv >= s.kv {
			return true
		}
	}
	return false
}

// setStat records a pod's stats report and, with stats saturation on,
// hands the pod to waiters if the report un-saturates it. The stats
// follower calls it; nothing but the hand-off's channel sends happens
// under the lock.
func (r *revision) setStat(p *scheduler.Pod, s *stats.Stat) {
	p.SetStat(s)
	if !r.queueing.sat.on() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.loads[p]
	if l == nil { // the pod left
		return
	}
	l.inFlight, l.tokens = p.InFlight, 0
	r.handOffLocked()
}

// fairCharge is what a request owes the fair queue of the revision it was
// admitted to, settled when it ends.
type fairCharge struct {
	rev *revision // nil until admitted
	tk  waitTicket
	// entry is the request's entry when the fair queue released it: its
	// estimate was charged; nil when it took a pod at once.
	entry *fairqueue.Entry[*waiter]
	// prepaid: it took a pod at once and its estimate was charged to its
	// tenant then (Served), to be corrected when it ends.
	prepaid bool
}

// settle charges the request's tenant what up used (inflight.usage): it
// replaces the estimate charged at release, or is charged as served for a
// request that did not wait. An unknown usage leaves the estimate. The
// open API is one tenant: nothing to share, nothing charged.
func (c fairCharge) settle(up *inflight) {
	if c.rev == nil || c.tk.tenant == "" {
		return
	}
	c.charge(up.usage())
}

// charge is settle with the usage known; u nil leaves the estimate.
func (c fairCharge) charge(u *openai.Usage) {
	if c.rev == nil || c.tk.tenant == "" || u == nil {
		return
	}
	in, out := int64(min(u.PromptTokens, maxUsageTokens)), int64(min(u.CompletionTokens, maxUsageTokens)) // ratelimit.go
	r := c.rev
	r.mu.Lock() // counters move only under the lock handOffLocked peeks and pops under
	defer r.mu.Unlock()
	switch {
	case c.entry != nil:
		r.queue.Settle(c.entry, in, out)
	case c.prepaid:
		r.queue.Served(c.tk.tenant, in-c.tk.input, out-c.tk.output)
	default:
		r.queue.Served(c.tk.tenant, in, out)
	}
}

// settleFailed settles the charge of a request that failed before an
// answer, as the rate limits do (spentKind): nothing used when no engine
// had it, its input when the client left after an engine had it, the
// estimate when the engine had it for the whole timeout.
func (c fairCharge) settleFailed(spent spentKind) {
	switch spent {
	case spentNone:
		c.charge(&openai.Usage{})
	case spentInput:
		c.charge(&openai.Usage{PromptTokens: uint64(max(c.tk.input, 0))})
	}
}

// ticketOf is how rt waits in the fair queue: as its tenant (the open API,
// and every tenant under Config.FirstComeFirstServed, as one anonymous
// tenant of class standard and weight 1), with its
// estimated tokens when they are needed (a tenant's request, or KV
// saturation on).
func (a *Activator) ticketOf(rt routed) waitTicket {
	tk := waitTicket{class: fairqueue.Standard, weight: 1}
	if tn := rt.tenant; tn != nil && !a.cfg.FirstComeFirstServed {
		tk.tenant = tn.cfg.Namespace + "/" + tn.cfg.Name
		tk.class, _ = fairqueue.ParseClass(string(tn.cfg.Priority)) // unknown: standard
		tk.weight = int(tn.cfg.Weight)
	}
	if rt.tenant != nil || a.cfg.SaturationKVUsage > 0 {
		tk.input, tk.output = estimateTokens(rt)
	}
	return tk
}

// estimateTokens estimates a request's tokens before it runs, as the rate
// limiter does (estimateCost): its prompt's and its output bound's.
func estimateTokens(rt routed) (input, output int64) {
	var c ratelimit.Cost
	if rt.adm != nil { // reserved already: the same estimate, not computed again
		c = rt.adm.res.Cost()
	} else {
		c, _ = estimateCost(rt.req)
	}
	return c.InputTokens, c.OutputTokens
}

// waitForPod obtains a pod of rt's revision for one attempt: the first
// waits in the fair queue as rt's tenant, a retry (tried not empty) among
// the retries. fc remembers, from the first attempt, what the request owes
// the fair queue. A tenant's request refused or shed by the queue is
// counted; the open API's refusal stays ErrBufferFull.
func (a *Activator) waitForPod(ctx context.Context, rt routed, tried map[string]bool, fc *fairCharge) (*scheduler.Pod, error) {
	rev := rt.rev.rev
	tk := fc.tk
	if fc.rev == nil {
		tk = a.ticketOf(rt)
	}
	adm, err := rev.obtain(ctx, rt.req, tried, tk, a.cfg.BufferTimeout)
	if adm.queued {
		a.metrics.queue.waited(rt, tk.class, adm.waited)
	}
	switch {
	case errors.Is(err, fairqueue.ErrFull):
		if rt.tenant == nil {
			return nil, ErrBufferFull
		}
		a.metrics.tenant.rejected(rt.tenant, rt.modelLabel(), rejectQueueFull)
		return nil, errQueueRefused
	case errors.Is(err, errShed):
		if rt.tenant == nil { // an open API's request queued before Tenants were loaded
			return nil, ErrBufferFull
		}
		a.metrics.tenant.rejected(rt.tenant, rt.modelLabel(), rejectShed)
		return nil, err
	case err != nil:
		return nil, err
	}
	if fc.rev == nil {
		*fc = fairCharge{rev: rev, tk: tk, entry: adm.entry}
		if adm.entry == nil && tk.tenant != "" {
			// It took a pod at once: its tenant is charged the estimate
			// now, as a released request is, so that what it runs counts
			// against it while it runs, not only once it ends.
			rev.mu.Lock()
			rev.queue.Served(tk.tenant, tk.input, tk.output)
			rev.mu.Unlock()
			fc.prepaid = true
		}
	}
	return adm.pod, nil
}

// queueMetrics are the fair queue's per-tenant series.
type queueMetrics struct {
	wait *prometheus.HistogramVec
}

func newQueueMetrics() *queueMetrics {
	return &queueMetrics{wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "kvasir_tenant_queue_wait_seconds",
		Help: "Time tenants' requests waited in the activator's fair queue for a replica, observed when they got one or left " +
			"(refused requests did not wait; requests that found a replica at once are not observed).",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
	}, []string{"namespace", "tenant", "model", "priority"})}
}

func (m *queueMetrics) collectors() []prometheus.Collector { return []prometheus.Collector{m.wait} }

// waited observes a wait of rt in class c; nothing for the open API.
func (m *queueMetrics) waited(rt routed, c fairqueue.Class, d time.Duration) {
	if rt.tenant == nil {
		return
	}
	m.wait.WithLabelValues(rt.tenant.cfg.Namespace, rt.tenant.cfg.Name, rt.modelLabel(), c.String()).Observe(d.Seconds())
}
