package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/bench"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// phaseResult is one phase of two-models.
type phaseResult struct {
	Phase int    `json:"phase"`
	Model string `json:"model"` // the service with traffic
	// Served and Failed per service (the idle one sends nothing).
	Served map[string]int `json:"served"`
	Failed map[string]int `json:"failed"`
	// The first request of the phase (sent alone, just before the load).
	FirstTTFTS float64 `json:"first_ttft_s"`
	FirstE2ES  float64 `json:"first_e2e_s"`
	FirstErr   string  `json:"first_error,omitempty"`
	TTFTP99S   float64 `json:"ttft_p99_s"`
	TTFTMaxS   float64 `json:"ttft_max_s"`
	// Since the phase started: its service ready >= 1, ready >= needed,
	// and the other service at desired 0 (-1: not within the phase).
	ReadyS       float64 `json:"ready_s"`
	FullS        float64 `json:"full_s"`
	OtherToZeroS float64 `json:"other_to_zero_s"`
	errs         []bench.ErrorExample
}

// twoModels: two models share --accelerators; traffic alternates between
// them. Both must be served in every phase of theirs, none may starve.
func twoModels(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("two-models", flag.ExitOnError)
	var c common
	c.register(fs, "two-models", "nvidia.com/gpu=2")
	phases := fs.Int("phases", 4, "phases of traffic, alternating: A, B, A, B, ...")
	phaseDur := fs.Duration("phase-duration", 30*time.Second, "how long each phase's load lasts")
	conc := fs.Int("concurrency", 16, "requests in flight during a phase (closed loop)")
	goalWait := fs.Duration("goal-first-wait", 30*time.Second, "goal: end-to-end latency of each phase's first request")
	_ = fs.Parse(args)

	svcs, err := c.fleet()
	if err != nil {
		return err
	}
	if len(svcs) != 2 {
		return fmt.Errorf("%s: want two ModelServices, found %d", c.file, len(svcs))
	}
	if *phases < 2 {
		return fmt.Errorf("--phases must be >= 2")
	}
	inv := map[string]int{}
	deviceEnv := ""
	if c.accelerators != "" {
		parsed, err := autoscaler.ParseInventory(c.accelerators)
		if err != nil {
			return fmt.Errorf("--accelerators: %w", err)
		}
		inv = parsed.Free()
		if _, ok := inv["nvidia.com/gpu"]; ok {
			deviceEnv = "CUDA_VISIBLE_DEVICES"
		}
	}
	needs := map[string]map[string]int{}
	needed := map[string]int{}
	for _, ms := range svcs {
		needs[ms.Name] = autoscaler.VariantsOf(&ms.Spec.Template)[0].Need
		sc := scalingOf(ms)
		n := *conc
		if sc.Target.Concurrency != nil {
			n = int(math.Ceil(float64(*conc) / *sc.Target.Concurrency))
		}
		if m := int(*sc.MaxScale); m > 0 {
			n = min(n, m)
		}
		needed[ms.Name] = n
	}
	names := []string{svcs[0].Name, svcs[1].Name}
	models := map[string]string{names[0]: svcs[0].Spec.Model, names[1]: svcs[1].Spec.Model}
	r := newReport(&c)
	r.Settings = map[string]any{"services": names, "accelerators": c.accelerators, "phases": *phases,
		"phase_duration_s": phaseDur.Seconds(), "concurrency": *conc, "input_len": c.inputLen, "output_len": c.outputLen,
		"needed": needed, "scale_interval_s": c.scaleInterval.Seconds()}
	for _, ms := range svcs {
		sc := scalingOf(ms)
		r.Settings[ms.Name] = map[string]any{"model": ms.Spec.Model, "max_scale": *sc.MaxScale, "accelerators_per_replica": needs[ms.Name],
			"stable_window_s": sc.StableWindow.Seconds(), "scale_to_zero_grace_period_s": sc.ScaleToZeroGracePeriod.Seconds(),
			"engine_args": ms.Spec.Template.Engine.Args}
	}

	w, p, err := startPlatform(ctx, &c, svcs)
	failed := true
	defer func() { w.Close(failed) }()
	if err != nil {
		return err
	}
	var zeroWait time.Duration
	for _, ms := range svcs {
		sc := scalingOf(ms)
		zeroWait = max(zeroWait, sc.StableWindow.Duration+sc.ScaleToZeroGracePeriod.Duration)
	}
	if err := p.Wait(ctx, c.startTimeout+zeroWait, poll, "both models at zero", func(st []local.RevisionStatus) bool {
		for _, n := range names {
			if rs, ok := find(st, n); !ok || rs.Desired != 0 || len(rs.Replicas) != 0 {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	s := startSampler(p, c.sample, deviceEnv)
	_ = benchkit.Sleep(ctx, time.Second)
	start := time.Now()
	type span struct{ from, to time.Time }
	spans := make([]span, 0, *phases)
	results := make([]*phaseResult, 0, *phases)
	var runErr error
	for i := 0; i < *phases && runErr == nil; i++ {
		svc := names[i%2]
		pr := &phaseResult{Phase: i + 1, Model: svc, Served: map[string]int{}, Failed: map[string]int{}}
		fmt.Fprintf(os.Stderr, "two-models: phase %d: %s only, %d in flight for %s\n", i+1, svc, *conc, *phaseDur)
		from := time.Now()
		var wg sync.WaitGroup
		var first *loadRun
		var firstErr error
		wg.Go(func() {
			first, firstErr = runLoad(ctx, p.Base, loadSpec{model: models[svc], concurrency: 1, numPrompts: 1,
				inputLen: c.inputLen, outputLen: c.outputLen, seed: int64(1000 + i)})
		})
		_ = benchkit.Sleep(ctx, 20*time.Millisecond) // the probe is the phase's first request
		ld, err := runLoad(ctx, p.Base, loadSpec{model: models[svc], concurrency: *conc, duration: *phaseDur,
			inputLen: c.inputLen, outputLen: c.outputLen, seed: int64(i + 1)})
		wg.Wait()
		spans = append(spans, span{from, time.Now()})
		if err != nil && ld == nil {
			runErr = fmt.Errorf("phase %d: %w", i+1, err)
			break
		}
		if err != nil {
			runErr = fmt.Errorf("phase %d: %w", i+1, err)
		}
		pr.Served[svc], pr.Failed[svc] = ld.res.Completed, ld.res.Errors
		pr.TTFTP99S, pr.TTFTMaxS, pr.errs = ld.res.TTFTP99S, ld.res.TTFTMaxS, ld.res.ErrorExamples
		switch {
		case firstErr != nil:
			pr.FirstErr = firstErr.Error()
			pr.Failed[svc]++
		case first.res.Errors > 0:
			pr.FirstErr = strings.TrimPrefix(examples(first.res.ErrorExamples), "; e.g. ")
			pr.Failed[svc]++
		default:
			pr.Served[svc]++
			pr.FirstTTFTS, pr.FirstE2ES = first.res.TTFTMaxS, first.res.E2EMaxS
		}
		results = append(results, pr)
	}
	_ = benchkit.Sleep(ctx, 500*time.Millisecond)
	samples, cpu := s.stop()
	tl := newTimeline(start, samples, cpu)
	r.attach(tl, p)
	r.Changes = map[string][]change{}
	for _, n := range names {
		r.Changes[n] = tl.changes(n, start.Add(-time.Second), time.Now())
	}

	t := &table{Title: "Per phase (times since the phase started; the first request is sent alone, just before the phase's load):",
		Header: []string{"phase", "traffic to", names[0] + " served / failed", names[1] + " served / failed",
			"first request TTFT", "first request e2e", "TTFT p99 / max", "ready >= 1", "ready >= needed", "other model at 0"}}
	for i, pr := range results {
		svc, other := pr.Model, names[(i+1)%2]
		sp := spans[i]
		rel := func(v float64, ok bool) float64 {
			if !ok {
				return -1
			}
			return v - sp.from.Sub(start).Seconds()
		}
		pr.ReadyS = rel(tl.first(svc, sp.from, sp.to, func(v revSample) bool { return v.Ready >= 1 }))
		pr.FullS = rel(tl.first(svc, sp.from, sp.to, func(v revSample) bool { return v.Ready >= needed[svc] }))
		pr.OtherToZeroS = rel(tl.first(other, sp.from, sp.to, func(v revSample) bool { return v.Desired == 0 }))
		first := "-"
		if pr.FirstErr == "" {
			first = fmt.Sprintf("%.2f s", pr.FirstE2ES)
		} else {
			first = "failed"
		}
		t.Rows = append(t.Rows, []string{fmt.Sprint(pr.Phase), svc,
			fmt.Sprintf("%d / %d", pr.Served[names[0]], pr.Failed[names[0]]), fmt.Sprintf("%d / %d", pr.Served[names[1]], pr.Failed[names[1]]),
			fmt.Sprintf("%.2f s", pr.FirstTTFTS), first, fmt.Sprintf("%s / %s", msec(pr.TTFTP99S), msec(pr.TTFTMaxS)),
			secs(pr.ReadyS), secs(pr.FullS), secs(pr.OtherToZeroS)})
	}
	r.Tables = append(r.Tables, t)
	r.Results["phases"] = results

	// Devices: never more wanted than the inventory holds, never one held twice.
	overCommit, conflicts, maxInUse := 0, 0, 0
	for _, smp := range tl.samples {
		for res, total := range inv {
			want := 0
			for _, n := range names {
				want += smp.Revs[n].Desired * needs[n][res]
			}
			if want > total {
				overCommit++
			}
		}
		conflicts = max(conflicts, smp.DeviceConflicts)
		maxInUse = max(maxInUse, smp.DevicesInUse)
	}
	totServed, totFailed, worstWait := map[string]int{}, map[string]int{}, 0.0
	for _, pr := range results {
		for n, v := range pr.Served {
			totServed[n] += v
		}
		for n, v := range pr.Failed {
			totFailed[n] += v
		}
		if pr.FirstErr == "" {
			worstWait = max(worstWait, pr.FirstE2ES)
		}
	}
	sortedNames := append([]string(nil), names...)
	sort.Strings(sortedNames)
	for _, n := range sortedNames {
		r.add("served_"+n, n+": requests served / failed, all phases", totServed[n], "%d")
		r.rows[len(r.rows)-1][1] += fmt.Sprintf(" / %d", totFailed[n])
		r.Results["failed_"+n] = totFailed[n]
	}
	r.add("worst_first_wait_s", "worst first-request wait (e2e) of a phase", worstWait, "%.2f s")
	if deviceEnv != "" {
		r.add("max_devices_in_use", "most devices held by live engines at once ("+deviceEnv+")", maxInUse, "%d")
	}
	ours, _ := tl.cpuStats(start, time.Now(), cpuSample.ours)
	r.add("cpu_ours_mean", "CPU of the benchmark's processes (mean, cores)", ours, "%.2f")

	for _, pr := range results {
		svc := pr.Model
		var msgs []string
		if pr.FirstErr != "" {
			msgs = append(msgs, "first request: "+pr.FirstErr)
		}
		if len(pr.errs) > 0 {
			msgs = append(msgs, strings.TrimPrefix(examples(pr.errs), "; e.g. "))
		}
		r.check(fmt.Sprintf("phase %d (%s) served", pr.Phase, svc), pr.Served[svc] > 0 && pr.Failed[svc] == 0,
			"%d served, %d failed%s", pr.Served[svc], pr.Failed[svc], prefixed(strings.Join(msgs, "; ")))
		r.check(fmt.Sprintf("phase %d (%s) first request", pr.Phase, svc), pr.FirstErr == "" && pr.FirstE2ES <= goalWait.Seconds(),
			"waited %.2f s end to end, TTFT %.2f s (goal %s)", pr.FirstE2ES, pr.FirstTTFTS, *goalWait)
		r.check(fmt.Sprintf("phase %d (%s) gets its replicas", pr.Phase, svc), pr.FullS >= 0,
			"ready >= %d after %s within the phase (the other model must give its accelerators back)", needed[svc], secs(pr.FullS))
	}
	if len(inv) > 0 {
		r.check("accelerators not overcommitted", overCommit == 0, "%d samples where the models' desired replicas want more than %v", overCommit, inv)
	}
	if deviceEnv != "" {
		r.check("no device held twice", conflicts == 0, "at most %d devices held by two live engines at once", conflicts)
	}
	err = r.finish(&c, fmt.Sprintf("Two models on %s, %d phases of %s, %d in flight (%s):", c.accelerators, *phases, *phaseDur, *conc, c.file), runErr)
	failed = err != nil
	return err
}
