package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// target is the kind of process a fault hits.
type target int

const (
	targetEngine target = iota
	targetQueueProxy
	targetActivator
)

func (t target) String() string {
	return [...]string{"engine", "queue-proxy", "activator"}[t]
}

// fault is one fault of a run: a signal to one process of a kind.
type fault struct {
	target target
	sig    syscall.Signal
}

func (f fault) String() string {
	if f.graceful() {
		return "SIGTERM (drain) " + f.target.String()
	}
	return "SIGKILL " + f.target.String()
}

// graceful reports whether the fault is a drain (SIGTERM).
func (f fault) graceful() bool { return f.sig == syscall.SIGTERM }

// goal states what clients must see.
func (f fault) goal() string {
	switch {
	case f.graceful():
		return "100% succeed"
	case f.target == targetActivator:
		return "only its own in-flight requests fail"
	}
	return "non-streamed: all succeed; streams: succeed or end with an error event; no hang"
}

// allFaults are the faults of a run, in order: the replica faults through
// kvasir local's port, then the activator faults through activator
// processes.
func allFaults() []fault {
	return []fault{
		{targetEngine, syscall.SIGKILL},
		{targetQueueProxy, syscall.SIGKILL},
		{targetEngine, syscall.SIGTERM},
		{targetQueueProxy, syscall.SIGTERM},
		{targetActivator, syscall.SIGKILL},
		{targetActivator, syscall.SIGTERM},
	}
}

// phaseResult is what one fault under load did.
type phaseResult struct {
	fault fault
	// victim names the process hit; victimIndex is the activator's index
	// in the load's endpoints (activator faults).
	victim      string
	victimIndex int
	// hit is how many requests were in flight at the victim when the
	// signal was sent: its engine's running sequences for a replica, the
	// clients' own count for an activator.
	hit int
	// kill is when the signal was sent, dead when the process was seen gone.
	kill, dead time.Time
	records    []*record
	// retries is how many forwarding attempts kvasir local's activators
	// retried on another replica during the phase (-1: not measured).
	retries float64
	// unreadyFirst: the victim activator answered 503 to a readiness probe
	// before it exited (for a drain: before it stopped accepting).
	unreadyFirst bool
}

// phase runs the load on the fleet, hits it with f, waits for it to recover
// and goes on with the load; it returns what the clients saw.
func (h *harness) phase(ctx context.Context, f fault) (*phaseResult, error) {
	if f.target == targetActivator {
		return h.activatorPhase(ctx, f)
	}
	return h.replicaPhase(ctx, f)
}

// underLoad runs the load on urls around fire: the load warms up (Before,
// and MinBefore requests ended), fire hits the fleet and returns once it
// recovered, then the load goes on (After, and MinAfter requests sent after
// the recovery ended); it returns every request's record.
func (h *harness) underLoad(ctx context.Context, urls []string, cfg loadConfig, fire func(*load) (recovered time.Time, err error)) ([]*record, error) {
	ld := newLoad(ctx, cfg, urls)
	began := time.Now()
	err := waitFor(ctx, h.opts.Before+h.opts.Timeout, "the load to warm up", func() (bool, error) {
		return time.Since(began) >= h.opts.Before && ld.ended() >= h.opts.MinBefore, nil
	})
	if err == nil {
		var recovered time.Time
		if recovered, err = fire(ld); err == nil {
			err = waitFor(ctx, h.opts.After+h.opts.Timeout, "the load to go on after the recovery", func() (bool, error) {
				return time.Since(recovered) >= h.opts.After && ld.endedSince(recovered) >= h.opts.MinAfter, nil
			})
		}
	}
	recs, serr := ld.stop()
	return recs, errors.Join(err, serr)
}

// replicaPhase hits the engine or the queue-proxy of the replica with the
// most requests in flight, through kvasir local's own port.
func (h *harness) replicaPhase(ctx context.Context, f fault) (*phaseResult, error) {
	if _, err := h.waitReady(ctx, ""); err != nil {
		return nil, err
	}
	res := &phaseResult{fault: f, victimIndex: -1}
	before, err := h.retries()
	if err != nil {
		return nil, err
	}
	h.logf("%s: load on %s", f, h.url)
	res.records, err = h.underLoad(ctx, []string{h.url}, h.opts.Load, func(*load) (time.Time, error) {
		var victim local.ReplicaStatus
		err := waitFor(ctx, h.opts.Timeout, "a replica with 2 requests in flight", func() (bool, error) {
			st, err := h.replicas()
			if err != nil {
				return false, err
			}
			res.hit = 0
			for _, r := range st.Replicas {
				if r.State != "Ready" {
					continue
				}
				n, err := h.scrape("http://"+r.EngineAddr+"/metrics", "vllm:num_requests_running")
				if err != nil {
					return false, err
				}
				if int(n) > res.hit {
					res.hit, victim = int(n), r
				}
			}
			return res.hit >= 2, nil
		})
		if err != nil {
			return time.Time{}, err
		}
		pid := victim.EnginePID
		if f.target == targetQueueProxy {
			pid = victim.ProxyPID
		}
		res.victim = fmt.Sprintf("%s of %s (pid %d)", f.target, victim.Name, pid)
		h.logf("%s: %s, %d requests running on its engine", f, res.victim, res.hit)
		res.kill = time.Now()
		if err := signalPID(pid, f.sig); err != nil {
			return time.Time{}, fmt.Errorf("signal %s: %w", res.victim, err)
		}
		// A drained process ends once its requests are done: the client
		// deadline bounds that.
		if err := waitFor(ctx, h.opts.Load.Deadline+h.opts.Timeout, res.victim+" to exit", func() (bool, error) {
			return !pidAlive(pid), nil
		}); err != nil {
			return time.Time{}, err
		}
		res.dead = time.Now()
		if _, err := h.waitReady(ctx, victim.Name); err != nil {
			return time.Time{}, err
		}
		h.logf("%s: exited after %s; fleet recovered after %s", f, res.dead.Sub(res.kill).Round(time.Millisecond),
			time.Since(res.kill).Round(time.Millisecond))
		return time.Now(), nil
	})
	if err != nil {
		return nil, err
	}
	after, err := h.retries()
	if err != nil {
		return nil, err
	}
	res.retries = after - before
	return res, nil
}

// activatorPhase runs the load over the activator processes, round-robin,
// and hits the one with the most requests in flight (at least one streamed
// and one not).
func (h *harness) activatorPhase(ctx context.Context, f fault) (*phaseResult, error) {
	if err := h.ensureActivators(ctx); err != nil {
		return nil, err
	}
	res := &phaseResult{fault: f, victimIndex: -1, retries: -1}
	urls := make([]string, len(h.acts))
	for i, a := range h.acts {
		urls[i] = a.url
	}
	h.logf("%s: load on %s", f, strings.Join(urls, ", "))
	// A Service in front of processes: a new connection per request, and
	// endpoints that fail their readiness leave the rotation.
	cfg := h.opts.Load
	cfg.NewConns, cfg.Probe = true, 50*time.Millisecond
	var err error
	res.records, err = h.underLoad(ctx, urls, cfg, func(ld *load) (time.Time, error) {
		err := waitFor(ctx, h.opts.Timeout, "an activator with a streamed and a non-streamed request in flight", func() (bool, error) {
			res.hit, res.victimIndex = 0, -1
			for i := range h.acts {
				s, p := ld.inFlight(i)
				if s >= 1 && p >= 1 && s+p > res.hit {
					res.hit, res.victimIndex = s+p, i
				}
			}
			return res.victimIndex >= 0, nil
		})
		if err != nil {
			return time.Time{}, err
		}
		v := h.acts[res.victimIndex]
		res.victim = fmt.Sprintf("%s (pid %d, %s)", v.name, v.cmd.Process.Pid, v.url)
		h.logf("%s: %s, %d requests in flight on it", f, res.victim, res.hit)
		res.kill = time.Now()
		if err := v.signal(f.sig); err != nil {
			return time.Time{}, err
		}
		if err := waitFor(ctx, h.opts.Load.Deadline+h.opts.Timeout, v.name+" to exit", func() (bool, error) {
			return !v.alive(), nil
		}); err != nil {
			return time.Time{}, err
		}
		res.dead = v.exited
		res.unreadyFirst = ld.sawUnready(res.victimIndex)
		h.logf("%s: exited after %s (failed its readiness first: %v)", f, res.dead.Sub(res.kill).Round(time.Millisecond), res.unreadyFirst)
		return res.dead, nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (h *harness) logf(format string, args ...any) {
	if h.opts.Logf != nil {
		h.opts.Logf(format, args...)
	}
}

// tally counts a phase's records.
type tally struct {
	started, streamed, ok int
	// failedPlain and failedStreamed are requests that failed, errorEvents
	// streams that ended with an error event, hangs requests that did not
	// end within the client deadline.
	failedPlain, failedStreamed, errorEvents, hangs int
	rerouted                                        int // requests sent on after a refused connection
	reasons                                         map[string]int
}

func (r *phaseResult) tally() tally {
	t := tally{reasons: map[string]int{}}
	for _, rec := range r.records {
		t.started++
		if rec.stream {
			t.streamed++
		}
		if rec.rerouted > 0 {
			t.rerouted++
		}
		switch rec.outcome {
		case outcomeOK:
			t.ok++
			continue
		case outcomeFailed:
			if rec.stream {
				t.failedStreamed++
			} else {
				t.failedPlain++
			}
		case outcomeErrorEvent:
			t.errorEvents++
		case outcomeHang:
			t.hangs++
		}
		kind := "non-streamed"
		if rec.stream {
			kind = "streamed"
		}
		t.reasons[kind+": "+rec.reason]++
	}
	return t
}

// violations lists the requests that break the fault's goal, and a fault
// that hit no request in flight (a phase that proves nothing).
func (r *phaseResult) violations() []string {
	var out []string
	if r.hit < 1 {
		out = append(out, "the fault hit no request in flight")
	}
	if r.fault.graceful() && r.fault.target == targetActivator && !r.unreadyFirst {
		out = append(out, "the drained activator never failed its readiness: it stopped accepting before the Service could remove it")
	}
	for _, rec := range r.records {
		if rec.outcome == outcomeOK {
			continue
		}
		switch {
		case r.fault.graceful():
		case r.fault.target == targetActivator:
			if rec.outcome != outcomeHang && rec.target == r.victimIndex && rec.inFlightAt(r.kill, r.dead) {
				continue // its own, in flight at the kill
			}
		case rec.outcome == outcomeErrorEvent:
			continue // a broken stream that ended with an error event
		}
		out = append(out, r.describe(rec))
	}
	return out
}

// describe tells one request's story relative to the fault.
func (r *phaseResult) describe(rec *record) string {
	kind := "non-streamed"
	if rec.stream {
		kind = "streamed"
	}
	at := func(t time.Time) string {
		if r.kill.IsZero() {
			return t.Format("15:04:05.000")
		}
		return fmt.Sprintf("%+.3fs", t.Sub(r.kill).Seconds())
	}
	return fmt.Sprintf("request %d (%s, endpoint %d, from %s to %s of the fault, re-routed %d): %s",
		rec.seq, kind, rec.target, at(rec.start), at(rec.end), rec.rerouted, rec.reason)
}

// writeTable writes the results as a Markdown table, then each phase's
// failure reasons and goal violations.
func writeTable(w io.Writer, results []*phaseResult) {
	fmt.Fprintln(w, "| Fault | Requests (streamed) | Succeeded | Failed: non-streamed / streamed | Streams ended by an error event | Hangs | Re-routed | Retried by an activator | In flight at the victim | Goal | Met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		t := r.tally()
		retries := "n/a"
		if r.retries >= 0 {
			retries = fmt.Sprintf("%.0f", r.retries)
		}
		met := "yes"
		if len(r.violations()) > 0 {
			met = "**no**"
		}
		fmt.Fprintf(w, "| %s | %d (%d) | %d (%.2f%%) | %d / %d | %d | %d | %d | %s | %d | %s | %s |\n",
			r.fault, t.started, t.streamed, t.ok, 100*float64(t.ok)/float64(max(t.started, 1)),
			t.failedPlain, t.failedStreamed, t.errorEvents, t.hangs, t.rerouted, retries, r.hit, r.fault.goal(), met)
	}
	for _, r := range results {
		t := r.tally()
		v := r.violations()
		if len(t.reasons) == 0 && len(v) == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s (victim: %s):\n", r.fault, r.victim)
		reasons := make([]string, 0, len(t.reasons))
		for why := range t.reasons {
			reasons = append(reasons, why)
		}
		sort.Strings(reasons)
		for _, why := range reasons {
			fmt.Fprintf(w, "- %d %s\n", t.reasons[why], why)
		}
		for i, s := range v {
			if i == 20 {
				fmt.Fprintf(w, "- ... and %d more goal violations\n", len(v)-20)
				break
			}
			fmt.Fprintf(w, "- goal violated: %s\n", s)
		}
	}
}
