package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// step: from zero, load jumps at once to --concurrency requests in flight
// (20 replicas' worth at the fleet's target of 8) and stays there for
// --duration. How fast does desired, then ready, reach what the load needs,
// and does any request fail on the way?
func step(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("step", flag.ExitOnError)
	var c common
	c.register(fs, "step", "")
	conc := fs.Int("concurrency", 160, "requests in flight during the step (closed loop; with --rate, the cap of the open loop)")
	rate := fs.Float64("rate", 0, "open-loop request rate (0: closed loop, --concurrency always in flight)")
	dur := fs.Duration("duration", 60*time.Second, "how long the step's load lasts")
	nPrompts := fs.Int("num-prompts", 0, "requests rendered for the run (0: enough for --duration)")
	seed := fs.Int64("seed", 1, "seed of the prompts and arrivals")
	goalDesired := fs.Duration("goal-desired", 6*time.Second, "goal: desired reaches the needed replicas within this long of the first request (the issue: within the panic window, 10% of the example's 60 s stable window)")
	goalReady := fs.Duration("goal-ready", 30*time.Second, "goal: ready reaches the needed replicas within this long of the first request")
	goalTTFT := fs.Duration("goal-ttft-p99", 5*time.Second, "goal: TTFT p99 over the step at most this (0: no goal)")
	idleBefore := fs.Duration("idle-before", 0, "time at zero before the step, sampled (0: the service's stable window, so its average starts full of zeros as in production; shorter, it covers only the seconds since the platform started)")
	maxCPU := fs.Float64("max-cpu", 0.9, "goal: the benchmark's processes (engines, queue-proxies, kvasir local, load generator) use at most this share of the machine's cores on average during the step")
	_ = fs.Parse(args)

	ms, sc, err := c.oneService()
	if err != nil {
		return err
	}
	if sc.Target.Concurrency == nil {
		return fmt.Errorf("%s: step needs spec.template.scaling.target.concurrency", c.file)
	}
	target := *sc.Target.Concurrency
	minScale, maxScale := int(*sc.MinScale), int(*sc.MaxScale)
	if minScale != 0 {
		return fmt.Errorf("%s: step starts from zero: want minScale 0, got %d", c.file, minScale)
	}
	// The decider's concurrency formula: ceil(concurrency / target), within
	// [minScale, maxScale].
	formula := int(math.Ceil(float64(*conc)/target - 1e-9))
	needed := formula
	if maxScale > 0 && needed > maxScale {
		needed = maxScale
	}
	r := newReport(&c)
	r.Settings = map[string]any{"service": ms.Name, "model": ms.Spec.Model, "concurrency": *conc, "rate": *rate,
		"duration_s": dur.Seconds(), "input_len": c.inputLen, "output_len": c.outputLen, "target_concurrency": target,
		"max_scale": maxScale, "stable_window_s": sc.StableWindow.Seconds(),
		"panic_window_s":   sc.StableWindow.Seconds() * float64(*sc.PanicWindowPercent) / 100,
		"scale_interval_s": c.scaleInterval.Seconds(), "idle_before_s": 0.0, "container_concurrency": ms.Spec.Template.ContainerConcurrency, "engine_args": ms.Spec.Template.Engine.Args, "needed": needed,
		"needed_formula": fmt.Sprintf("ceil(concurrency %d / target.concurrency %g) = %d, capped by maxScale %d", *conc, target, formula, maxScale)}

	w, p, err := startPlatform(ctx, &c, []*v1alpha1.ModelService{ms})
	failed := true
	defer func() { w.Close(failed) }()
	if err != nil {
		return err
	}
	zeroWait := c.startTimeout + sc.StableWindow.Duration + sc.ScaleToZeroGracePeriod.Duration
	if err := p.Wait(ctx, zeroWait, poll, ms.Name+" at zero", func(st []local.RevisionStatus) bool {
		rs, ok := find(st, ms.Name)
		return ok && rs.Desired == 0 && rs.Ready == 0 && len(rs.Replicas) == 0
	}); err != nil {
		return err
	}
	s := startSampler(p, c.sample, "")
	if *idleBefore == 0 {
		*idleBefore = sc.StableWindow.Duration
	}
	r.Settings["idle_before_s"] = idleBefore.Seconds()
	fmt.Fprintf(os.Stderr, "step: at zero; idling %s before the step\n", *idleBefore)
	if err := benchkit.Sleep(ctx, *idleBefore); err != nil {
		s.stop()
		return err
	}
	fmt.Fprintf(os.Stderr, "step: %d in flight (rate %g) for %s against %s\n", *conc, *rate, *dur, ms.Spec.Model)
	ld, loadErr := runLoad(ctx, p.Base, loadSpec{model: ms.Spec.Model, rate: *rate, concurrency: *conc, duration: *dur,
		numPrompts: *nPrompts, inputLen: c.inputLen, outputLen: c.outputLen, seed: *seed})
	_ = benchkit.Sleep(ctx, time.Second)
	samples, cpu := s.stop()
	if loadErr != nil && ld == nil {
		return loadErr
	}
	t0 := ld.first
	tl := newTimeline(t0, samples, cpu)
	r.attach(tl, p)
	end := ld.lastEnd
	stepEnd := t0.Add(*dur)
	svc := ms.Name

	res := ld.res
	tDesired, okD := tl.first(svc, t0, end, func(v revSample) bool { return v.Desired >= needed })
	tReady, okR := tl.first(svc, t0, end, func(v revSample) bool { return v.Ready >= needed })
	tFirstDesired, _ := tl.first(svc, t0, end, func(v revSample) bool { return v.Desired >= 1 })
	tFirstReady, _ := tl.first(svc, t0, end, func(v revSample) bool { return v.Ready >= 1 })
	if !okD {
		tDesired = -1
	}
	if !okR {
		tReady = -1
	}
	peakDesired := tl.peak(svc, t0, end, func(v revSample) float64 { return float64(v.Desired) })
	peakReady := tl.peak(svc, t0, end, func(v revSample) float64 { return float64(v.Ready) })
	peakProcs := tl.peak(svc, t0, end, func(v revSample) float64 { return float64(v.Replicas) })
	peakConc := tl.peak(svc, t0, stepEnd, func(v revSample) float64 { return v.Concurrency })
	meanConc := tl.mean(svc, t0, stepEnd, func(v revSample) float64 { return v.Concurrency })
	peakBuffered := tl.peak(svc, t0, stepEnd, func(v revSample) float64 { return v.Buffered })
	peakOne := tl.peak(svc, t0, stepEnd, func(v revSample) float64 { return float64(v.MaxReplicaInFlight) })
	peakWaiting := tl.peak(svc, t0, stepEnd, func(v revSample) float64 { return v.MaxEngineWaiting })

	r.add("needed", "needed replicas ("+r.Settings["needed_formula"].(string)+")", needed, "%d")
	r.add("time_to_first_desired_s", "first request -> desired >= 1", tFirstDesired, "%.2f s")
	r.add("time_to_first_ready_s", "first request -> ready >= 1", tFirstReady, "%.2f s")
	r.row(fmt.Sprintf("first request -> desired >= %d", needed), secs(tDesired))
	r.Results["time_to_desired_s"] = tDesired
	r.row(fmt.Sprintf("first request -> ready >= %d", needed), secs(tReady))
	r.Results["time_to_ready_s"] = tReady
	r.add("peak_desired", "peak desired replicas", int(peakDesired), "%d")
	r.add("peak_ready", "peak ready replicas", int(peakReady), "%d")
	r.add("peak_processes", "peak replica processes (starting and stopping included)", int(peakProcs), "%d")
	r.add("activator_concurrency_mean", "concurrency at the activator (buffered + in flight), mean over the step", meanConc, "%.1f")
	r.add("activator_concurrency_peak", "concurrency at the activator, peak", peakConc, "%.0f")
	r.add("buffered_peak", "buffered at the activator, peak", peakBuffered, "%.0f")
	r.add("peak_replica_in_flight", "requests on the busiest replica (queue-proxy in flight), peak", int(peakOne), "%d")
	r.add("peak_engine_waiting", "waiting queue of the busiest engine, peak", peakWaiting, "%.0f")
	r.add("requests", "requests sent", res.Requests, "%d")
	r.add("completed", "requests completed", res.Completed, "%d")
	r.add("errors", "requests failed", res.Errors, "%d")
	r.add("throughput_rps", "throughput", res.ThroughputRPS, "%.1f req/s")
	r.row("TTFT p50 / p99 / max over the step", fmt.Sprintf("%s / %s / %s", msec(res.TTFTP50S), msec(res.TTFTP99S), msec(res.TTFTMaxS)))
	r.Results["ttft_p50_s"], r.Results["ttft_p99_s"], r.Results["ttft_max_s"] = res.TTFTP50S, res.TTFTP99S, res.TTFTMaxS
	r.row("e2e p50 / p99 / max over the step", fmt.Sprintf("%s / %s / %s", msec(res.E2EP50S), msec(res.E2EP99S), msec(res.E2EMaxS)))
	r.Results["e2e_p50_s"], r.Results["e2e_p99_s"], r.Results["e2e_max_s"] = res.E2EP50S, res.E2EP99S, res.E2EMaxS
	if okR {
		from := t0.Add(time.Duration(tReady * float64(time.Second)))
		e := ld.e2ePercentile(from, stepEnd, 99)
		r.add("e2e_p99_after_ready_s", fmt.Sprintf("e2e p99 of requests sent once ready >= %d", needed), e, "%.3f s")
	}
	cores := float64(runtime.NumCPU())
	cpuRow := func(key, label string, f func(cpuSample) float64) float64 {
		mean, peak := tl.cpuStats(t0, stepEnd, f)
		r.row("CPU, "+label+" (mean / peak, cores)", fmt.Sprintf("%.2f / %.2f", mean, peak))
		r.Results["cpu_"+key+"_mean"], r.Results["cpu_"+key+"_peak"] = mean, peak
		return mean
	}
	engines := cpuRow("engines", "simulators", func(c cpuSample) float64 { return c.Engines })
	cpuRow("proxies", "queue-proxies", func(c cpuSample) float64 { return c.Proxies })
	cpuRow("platform", "kvasir local (activator, scaler)", func(c cpuSample) float64 { return c.Platform })
	cpuRow("harness", "load generator (this program)", func(c cpuSample) float64 { return c.Harness })
	ours := cpuRow("ours", "all of the above", cpuSample.ours)
	machine := cpuRow("machine", fmt.Sprintf("whole machine, %d cores, other users included (/proc/stat, tick-sampled: can read below the per-process figures, which are exact)", int(cores)), func(c cpuSample) float64 { return c.Machine })
	if peakReady > 0 {
		r.add("cpu_per_engine", "CPU per simulator at peak replicas (mean, cores)", engines/peakReady, "%.3f")
	}

	r.check("no failed requests", res.Errors == 0 && loadErr == nil, "%d of %d failed%s", res.Errors, res.Requests, examples(res.ErrorExamples))
	r.check("desired reaches needed", okD && tDesired <= goalDesired.Seconds(), "desired >= %d after %s (goal %s)", needed, secs(tDesired), goalDesired)
	r.check("ready reaches needed", okR && tReady <= goalReady.Seconds(), "ready >= %d after %s (goal %s)", needed, secs(tReady), goalReady)
	r.check("no overshoot", int(peakDesired) <= needed, "peak desired %d, needed %d (the offered concurrency never asks for more)", int(peakDesired), needed)
	if *goalTTFT > 0 {
		r.check("TTFT p99", res.TTFTP99S <= goalTTFT.Seconds(), "%s (goal %s)", msec(res.TTFTP99S), goalTTFT)
	}
	r.check("CPU not saturated", ours <= *maxCPU*cores, "the benchmark's processes used %.2f of %d cores on average (goal <= %.0f%%); whole machine %.2f",
		ours, int(cores), *maxCPU*100, machine)
	if peakOne > 2*target {
		r.note("one replica held %d requests at once (target %g, containerConcurrency %d): what the activator hands a replica stays in its engine's queue even after more replicas are ready, which is what the TTFT tail shows",
			int(peakOne), target, ms.Spec.Template.ContainerConcurrency)
	}
	if machine > 0.95*cores {
		r.note("the machine was saturated (%.2f of %d cores busy on average, other users included): latencies and times are pessimistic", machine, int(cores))
	}
	r.ScaleEvents = tl.changes(svc, t0.Add(-time.Second), end)
	err = r.finish(&c, fmt.Sprintf("Step: 0 -> %d requests in flight (%s replicas' worth at target concurrency %g) for %s, %s:",
		*conc, fmt.Sprint(formula), target, *dur, c.file), loadErr)
	failed = err != nil
	return err
}
