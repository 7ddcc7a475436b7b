package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// idle: a burst, then silence. When does desired reach 0 after the last
// response (against scaleToZeroGracePeriod), and what does the next
// request pay to wake the model (the cold start)?
func idle(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	var c common
	c.register(fs, "idle", "")
	burstN := fs.Int("burst-requests", 64, "requests of the burst")
	burstC := fs.Int("burst-concurrency", 16, "requests in flight during the burst (closed loop)")
	slack := fs.Duration("zero-slack", 3*time.Second, "goal: desired reaches 0 at most this long after the longer of the grace period and the stable window")
	hold := fs.Duration("hold", 3*time.Second, "goal: desired stays at 0 for this long without traffic before the wake-up request")
	goalCold := fs.Duration("goal-cold-start", 10*time.Second, "goal: end-to-end latency of the request that wakes the model")
	_ = fs.Parse(args)

	ms, sc, err := c.oneService()
	if err != nil {
		return err
	}
	if *sc.MinScale != 0 {
		return fmt.Errorf("%s: idle needs minScale 0, got %d", c.file, *sc.MinScale)
	}
	grace, window := sc.ScaleToZeroGracePeriod.Duration, sc.StableWindow.Duration
	r := newReport(&c)
	r.Settings = map[string]any{"service": ms.Name, "model": ms.Spec.Model, "burst_requests": *burstN, "burst_concurrency": *burstC,
		"input_len": c.inputLen, "output_len": c.outputLen, "scale_to_zero_grace_period_s": grace.Seconds(),
		"stable_window_s": window.Seconds(), "scale_interval_s": c.scaleInterval.Seconds(), "engine_args": ms.Spec.Template.Engine.Args}

	w, p, err := startPlatform(ctx, &c, []*v1alpha1.ModelService{ms})
	failed := true
	defer func() { w.Close(failed) }()
	if err != nil {
		return err
	}
	atZero := func(st []local.RevisionStatus) bool {
		rs, ok := find(st, ms.Name)
		return ok && rs.Desired == 0
	}
	if err := p.Wait(ctx, c.startTimeout+grace+window, poll, ms.Name+" at zero", atZero); err != nil {
		return err
	}
	s := startSampler(p, c.sample, "")
	_ = benchkit.Sleep(ctx, time.Second)
	fmt.Fprintf(os.Stderr, "idle: burst of %d requests, %d in flight\n", *burstN, *burstC)
	burst, err := runLoad(ctx, p.Base, loadSpec{model: ms.Spec.Model, concurrency: *burstC, numPrompts: *burstN,
		inputLen: c.inputLen, outputLen: c.outputLen, seed: 1})
	if err != nil {
		s.stop()
		return err
	}
	lastResp := burst.lastEnd
	fmt.Fprintf(os.Stderr, "idle: last response at +%.2fs; waiting for desired 0 (grace period %s, stable window %s)\n",
		lastResp.Sub(burst.first).Seconds(), grace, window)

	// Poll on our own, finer than the sampler, for the instant of zero.
	longest := max(grace, window)
	var zeroAt, goneAt time.Time
	deadline := lastResp.Add(longest + *slack + time.Minute)
	for time.Now().Before(deadline) && (zeroAt.IsZero() || goneAt.IsZero()) {
		if err := p.Alive(); err != nil {
			s.stop()
			return err
		}
		st, err := p.Replicas()
		now := time.Now()
		if err == nil {
			if rs, ok := find(st, ms.Name); ok {
				if zeroAt.IsZero() && rs.Desired == 0 {
					zeroAt = now
				}
				if goneAt.IsZero() && rs.Desired == 0 && len(rs.Replicas) == 0 {
					goneAt = now
				}
			}
		}
		if benchkit.Sleep(ctx, 20*time.Millisecond) != nil {
			s.stop()
			return ctx.Err()
		}
	}
	// It must stay at zero without traffic.
	bounced := false
	if !zeroAt.IsZero() {
		until := time.Now().Add(*hold)
		for time.Now().Before(until) {
			if st, err := p.Replicas(); err == nil && !atZero(st) {
				bounced = true
				break
			}
			_ = benchkit.Sleep(ctx, 50*time.Millisecond)
		}
	}
	var wake *loadRun
	var wakeErr error
	wakeStart := time.Now()
	if !zeroAt.IsZero() {
		fmt.Fprintln(os.Stderr, "idle: at zero; sending the wake-up request")
		wake, wakeErr = runLoad(ctx, p.Base, loadSpec{model: ms.Spec.Model, concurrency: 1, numPrompts: 1,
			inputLen: c.inputLen, outputLen: c.outputLen, seed: 2})
		_ = benchkit.Sleep(ctx, 500*time.Millisecond)
	}
	samples, cpu := s.stop()
	tl := newTimeline(lastResp, samples, cpu)
	r.attach(tl, p)
	r.ScaleEvents = tl.changes(ms.Name, burst.first.Add(-time.Second), time.Now())

	toZero, toGone := -1.0, -1.0
	if !zeroAt.IsZero() {
		toZero = zeroAt.Sub(lastResp).Seconds()
	}
	if !goneAt.IsZero() {
		toGone = goneAt.Sub(lastResp).Seconds()
	}
	br := burst.res
	peak := tl.peak(ms.Name, burst.first, lastResp, func(v revSample) float64 { return float64(v.Desired) })
	r.add("burst_completed", "burst: requests completed", br.Completed, "%d")
	r.add("burst_errors", "burst: requests failed", br.Errors, "%d")
	r.add("burst_peak_desired", "burst: peak desired replicas", int(peak), "%d")
	r.add("burst_ttft_max_s", "burst: TTFT max (the first requests waited for a replica)", br.TTFTMaxS, "%.3f s")
	r.row("last response -> desired 0", secs(toZero))
	r.Results["time_to_zero_s"] = toZero
	r.row("last response -> no replica process left", secs(toGone))
	r.Results["time_to_no_process_s"] = toGone
	r.add("scale_to_zero_grace_period_s", "configured scaleToZeroGracePeriod", grace.Seconds(), "%.0f s")
	r.add("stable_window_s", "configured stableWindow", window.Seconds(), "%.0f s")
	lower := grace - c.scaleInterval - 200*time.Millisecond
	upper := longest + *slack
	if window > grace {
		r.note("the stable window (%s) is longer than the grace period (%s): the window's average must empty before the decider asks for 0, so the model idles for about the stable window, not the grace period", window, grace)
	}
	r.check("not before the grace period", toZero < 0 || toZero >= lower.Seconds(),
		"desired 0 after %s; the grace period is %s (tolerance: one scale interval)", secs(toZero), grace)
	r.check("reaches zero", toZero >= 0 && toZero <= upper.Seconds(), "desired 0 after %s (goal <= max(grace %s, stable window %s) + %s)",
		secs(toZero), grace, window, *slack)
	r.check("stays at zero", !zeroAt.IsZero() && !bounced, "desired stayed 0 for %s without traffic: %v", *hold, !bounced && !zeroAt.IsZero())
	r.check("burst served", br.Errors == 0, "%d of %d failed%s", br.Errors, br.Requests, examples(br.ErrorExamples))
	if wake != nil {
		wr := wake.res
		tDesired, okD := tl.first(ms.Name, wakeStart, time.Now(), func(v revSample) bool { return v.Desired >= 1 })
		tReady, okR := tl.first(ms.Name, wakeStart, time.Now(), func(v revSample) bool { return v.Ready >= 1 })
		base := wakeStart.Sub(lastResp).Seconds()
		if okD {
			r.add("wake_time_to_desired_s", "wake-up: request -> desired >= 1 (100 ms samples)", tDesired-base, "%.2f s")
		}
		if okR {
			r.add("wake_time_to_ready_s", "wake-up: request -> ready >= 1 (100 ms samples)", tReady-base, "%.2f s")
		}
		r.add("cold_start_ttft_s", "wake-up: TTFT (cold start)", wr.TTFTMaxS, "%.3f s")
		r.add("cold_start_e2e_s", "wake-up: end-to-end latency (cold start)", wr.E2EMaxS, "%.3f s")
		r.add("wake_errors", "wake-up: errors", wr.Errors, "%d")
		r.check("wake-up served", wakeErr == nil && wr.Errors == 0 && wr.Completed == 1, "%d completed, %d failed%s%s",
			wr.Completed, wr.Errors, examples(wr.ErrorExamples), errText(wakeErr))
		r.check("cold start", wr.Completed == 1 && wr.E2EMaxS <= goalCold.Seconds(), "%.3f s end to end (goal %s)", wr.E2EMaxS, *goalCold)
	} else {
		r.check("wake-up served", false, "not sent: the model never reached zero")
	}
	err = r.finish(&c, fmt.Sprintf("Idle: burst of %d, silence, scale to zero, wake-up request (%s):", *burstN, c.file), nil)
	failed = err != nil
	return err
}
