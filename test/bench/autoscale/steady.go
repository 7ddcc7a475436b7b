package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// steady: constant open-loop load for --duration. After settling (the
// first stable window), desired must not change: no flapping.
func steady(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("steady", flag.ExitOnError)
	var c common
	c.register(fs, "steady", "")
	rate := fs.Float64("rate", 12, "open-loop request rate (Poisson), req/s")
	capConc := fs.Int("max-concurrency", 400, "cap on requests in flight (a safety net; the load should never reach it)")
	dur := fs.Duration("duration", 5*time.Minute, "how long the load lasts")
	settle := fs.Duration("settle", 0, "scale events before this long after the first request are not counted (0: twice the service's stable window: a panic holds for one stable window, and the stable average then needs one more to forget the start)")
	nPrompts := fs.Int("num-prompts", 0, "requests rendered for the run (0: enough for --duration)")
	seed := fs.Int64("seed", 1, "seed of the prompts and arrivals")
	maxEvents := fs.Int("max-scale-events", 0, "goal: at most this many changes of desired after settling")
	_ = fs.Parse(args)

	ms, sc, err := c.oneService()
	if err != nil {
		return err
	}
	if *settle == 0 {
		*settle = 2 * sc.StableWindow.Duration
	}
	if *dur <= *settle {
		return fmt.Errorf("--duration %s must exceed the settling time %s (--settle)", *dur, *settle)
	}
	var target float64
	if sc.Target.Concurrency != nil {
		target = *sc.Target.Concurrency
	}
	r := newReport(&c)
	r.Settings = map[string]any{"service": ms.Name, "model": ms.Spec.Model, "rate": *rate, "max_concurrency": *capConc,
		"duration_s": dur.Seconds(), "settle_s": settle.Seconds(), "input_len": c.inputLen, "output_len": c.outputLen,
		"target_concurrency": target, "min_scale": *sc.MinScale, "max_scale": *sc.MaxScale,
		"stable_window_s": sc.StableWindow.Seconds(), "scale_interval_s": c.scaleInterval.Seconds(),
		"engine_args": ms.Spec.Template.Engine.Args}

	w, p, err := startPlatform(ctx, &c, []*v1alpha1.ModelService{ms})
	failed := true
	defer func() { w.Close(failed) }()
	if err != nil {
		return err
	}
	initial := max(int(*sc.InitialScale), int(*sc.MinScale))
	if err := p.Wait(ctx, c.startTimeout, poll, fmt.Sprintf("%s at its initial %d ready", ms.Name, initial), func(st []local.RevisionStatus) bool {
		rs, ok := find(st, ms.Name)
		return ok && rs.Ready == initial && rs.Desired == initial
	}); err != nil {
		return err
	}
	s := startSampler(p, c.sample, "")
	_ = benchkit.Sleep(ctx, time.Second)
	fmt.Fprintf(os.Stderr, "steady: %g req/s for %s against %s (settling: %s)\n", *rate, *dur, ms.Spec.Model, *settle)
	ld, loadErr := runLoad(ctx, p.Base, loadSpec{model: ms.Spec.Model, rate: *rate, concurrency: *capConc, duration: *dur,
		numPrompts: *nPrompts, inputLen: c.inputLen, outputLen: c.outputLen, seed: *seed})
	samples, cpu := s.stop()
	if loadErr != nil && ld == nil {
		return loadErr
	}
	t0 := ld.first
	tl := newTimeline(t0, samples, cpu)
	r.attach(tl, p)
	svc := ms.Name
	settled, end := t0.Add(*settle), t0.Add(*dur)
	all := tl.changes(svc, t0.Add(-time.Second), end)
	after := tl.changes(svc, settled, end)
	r.ScaleEvents = all
	meanConc := tl.mean(svc, settled, end, func(v revSample) float64 { return v.Concurrency })
	peakConc := tl.peak(svc, settled, end, func(v revSample) float64 { return v.Concurrency })
	minD, maxD := math.MaxInt, 0
	for _, smp := range tl.samples {
		if smp.At.Before(settled) || smp.At.After(end) {
			continue
		}
		d := smp.Revs[svc].Desired
		minD, maxD = min(minD, d), max(maxD, d)
	}
	expected := 0
	if target > 0 {
		expected = int(math.Ceil(meanConc/target - 1e-9))
	}
	res := ld.res
	r.add("scale_events_total", "changes of desired, whole run", len(all), "%d")
	r.add("scale_events_after_settle", fmt.Sprintf("changes of desired after settling (%s)", *settle), len(after), "%d")
	r.add("reversals_after_settle", "direction reversals after settling (flaps)", reversals(after), "%d")
	r.add("reversals_total", "direction reversals, whole run", reversals(all), "%d")
	r.row("desired after settling (min / max)", fmt.Sprintf("%d / %d", minD, maxD))
	r.Results["desired_min_after_settle"], r.Results["desired_max_after_settle"] = minD, maxD
	r.add("activator_concurrency_mean", "concurrency at the activator after settling, mean", meanConc, "%.1f")
	r.add("activator_concurrency_peak", "concurrency at the activator after settling, peak (100 ms samples)", peakConc, "%.0f")
	if target > 0 {
		r.add("expected_replicas", fmt.Sprintf("ceil(mean concurrency / target %g)", target), expected, "%d")
	}
	r.add("requests", "requests sent", res.Requests, "%d")
	r.add("errors", "requests failed", res.Errors, "%d")
	r.add("throughput_rps", "throughput", res.ThroughputRPS, "%.1f req/s")
	r.row("TTFT p50 / p99 / max", fmt.Sprintf("%s / %s / %s", msec(res.TTFTP50S), msec(res.TTFTP99S), msec(res.TTFTMaxS)))
	r.Results["ttft_p50_s"], r.Results["ttft_p99_s"], r.Results["ttft_max_s"] = res.TTFTP50S, res.TTFTP99S, res.TTFTMaxS
	r.row("e2e p50 / p99", fmt.Sprintf("%s / %s", msec(res.E2EP50S), msec(res.E2EP99S)))
	r.Results["e2e_p50_s"], r.Results["e2e_p99_s"] = res.E2EP50S, res.E2EP99S
	ours, _ := tl.cpuStats(t0, end, cpuSample.ours)
	machine, _ := tl.cpuStats(t0, end, func(c cpuSample) float64 { return c.Machine })
	r.row("CPU, the benchmark's processes / whole machine (mean, cores)", fmt.Sprintf("%.2f / %.2f", ours, machine))
	r.Results["cpu_ours_mean"], r.Results["cpu_machine_mean"] = ours, machine
	var ev []string
	for _, ch := range all {
		ev = append(ev, fmt.Sprintf("%.1fs: %d->%d", ch.T, ch.From, ch.To))
	}
	r.row("scale events (time since the first request)", strings.Join(ev, ", "))

	r.check("no failed requests", res.Errors == 0 && loadErr == nil, "%d of %d failed%s", res.Errors, res.Requests, examples(res.ErrorExamples))
	r.check("no flapping", len(after) <= *maxEvents, "%d changes of desired after settling (goal <= %d)", len(after), *maxEvents)
	if target > 0 {
		r.check("replicas fit the load", minD >= expected-1 && maxD <= expected+1,
			"desired %d..%d after settling; the mean concurrency %.1f asks for %d (+-1)", minD, maxD, meanConc, expected)
	}
	err = r.finish(&c, fmt.Sprintf("Steady: %g req/s for %s (settling %s), %s:", *rate, *dur, *settle, c.file), loadErr)
	failed = err != nil
	return err
}
