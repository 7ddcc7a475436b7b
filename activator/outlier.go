package activator

import (
	"time"

	"github.com/kvasir-serving/kvasir/pkg/scheduler"
)

// Outlier detection, as Envoy's consecutive gateway failures: a replica
// that fails Config.OutlierConsecutiveFailures times in a row is ejected
// from picking for OutlierBaseEjection times its ejection count (capped at
// OutlierMaxEjection). At most OutlierMaxEjectionPercent of a revision
// role's replicas are ejected at once, but always at least one may be; when
// every ready replica is ejected (panic), they are picked anyway rather
// than have requests buffer for replicas that exist. Ejections end by
// themselves: no timer, a replica is ejected while now < its deadline.

// outcome is what a request tells of the replica that served it.
type outcome int

const (
	// outcomeNone: nothing to learn (the client left, or the request
	// never reached the replica's answer).
	outcomeNone outcome = iota
	// outcomeSuccess: an answer arrived whole (any status but 502/503/504).
	outcomeSuccess
	// outcomeFailure: a connection error, a 502/503/504 from the replica, a
	// timeout, or an answer broken before its end.
	outcomeFailure
)

// isGatewayFailure reports whether a replica's status counts as a failure.
func isGatewayFailure(code int) bool {
	return code == 502 || code == 503 || code == 504
}

// outlierConfig is the part of Config a revision needs, plus the clock.
type outlierConfig struct {
	consecutive int // 0: off
	base, max   time.Duration
	maxPercent  int
	now         func() time.Time
}

func outlierConfigOf(c Config, now func() time.Time) outlierConfig {
	return outlierConfig{consecutive: c.OutlierConsecutiveFailures, base: c.OutlierBaseEjection,
		max: c.OutlierMaxEjection, maxPercent: c.OutlierMaxEjectionPercent, now: now}
}

// podHealth is the outlier state of one ready pod.
type podHealth struct {
	failures  int       // consecutive failures
	ejections int       // the multiplier of the next ejection's length, less one
	until     time.Time // ejected while now is before it
}

func (h *podHealth) ejected(now time.Time) bool { return h != nil && now.Before(h.until) }

// decay lowers the ejection multiplier by one for every base period the
// pod has stayed in since its last ejection ended, as Envoy's does (each
// period counts once: until moves past the periods consumed).
func (h *podHealth) decay(now time.Time, base time.Duration) {
	if h.until.IsZero() || h.ejections == 0 || now.Before(h.until) {
		return
	}
	n := int(now.Sub(h.until) / base)
	h.ejections = max(0, h.ejections-n)
	h.until = h.until.Add(time.Duration(n) * base)
}

// ejection is an ejection that just happened, for the caller to log after
// the lock is released.
type ejection struct {
	pod string
	dur time.Duration
}

// ejectedLocked reports whether p is ejected now.
func (r *revision) ejectedLocked(p *scheduler.Pod, now time.Time) bool {
	return r.health[p].ejected(now)
}

// ejectedCountLocked returns how many ready pods are ejected now.
func (r *revision) ejectedCountLocked(now time.Time) int {
	n := 0
	for _, p := range r.pods {
		if r.ejectedLocked(p, now) {
			n++
		}
	}
	return n
}

// panicLocked reports whether every ready pod is ejected, in which case
// ejection is ignored for picking.
func (r *revision) panicLocked(now time.Time) bool {
	return len(r.pods) > 0 && r.ejectedCountLocked(now) == len(r.pods)
}

// reportLocked records the outcome of a request on p and ejects p when it
// has failed too often; it returns the ejection, if one happened.
func (r *revision) reportLocked(p *scheduler.Pod, o outcome, now time.Time) *ejection {
	if o == outcomeNone || r.outlier.consecutive == 0 {
		return nil
	}
	h := r.health[p]
	if h == nil {
		if o == outcomeSuccess || !r.isReadyLocked(p) {
			return nil // nothing to remember, or the pod has left
		}
		h = &podHealth{}
		r.health[p] = h
	}
	if o == outcomeSuccess {
		h.failures = 0
		if h.decay(now, r.outlier.base); h.ejections == 0 && !h.ejected(now) {
			delete(r.health, p) // nothing left to remember: picking skips the outlier checks again
		}
		return nil
	}
	h.failures++
	if h.failures < r.outlier.consecutive || h.ejected(now) {
		return nil
	}
	allowed := max(1, len(r.pods)*r.outlier.maxPercent/100)
	if r.ejectedCountLocked(now) >= allowed {
		return nil // Envoy's max ejection percent: p stays in, still counted
	}
	h.decay(now, r.outlier.base)
	h.ejections++
	d := min(r.outlier.base*time.Duration(h.ejections), r.outlier.max)
	h.until = now.Add(d)
	h.failures = 0
	r.ejections++
	return &ejection{pod: p.Name, dur: d}
}

// isReadyLocked reports whether p is one of the ready pods.
func (r *revision) isReadyLocked(p *scheduler.Pod) bool {
	for _, x := range r.pods {
		if x == p {
			return true
		}
	}
	return false
}

// outlierStats returns how many ready pods are ejected now and how many
// ejections there have been.
func (r *revision) outlierStats() (ejected int, ejections uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ejectedCountLocked(r.outlier.now()), r.ejections
}
