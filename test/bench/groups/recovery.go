package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// kill is one SIGKILL of a worker and the recovery that followed.
type kill struct {
	victim, replacement string
	at                  time.Time // the SIGKILL
	// engines is the engines' own start, measured alone just before.
	engines time.Duration
	// From the SIGKILL: the broken group gone from /kvasir/replicas, the
	// new group's processes started (its Started), the new group Ready,
	// and its engine's first answer (vllm:request_success_total > 0).
	gone, started, ready, firstAnswer time.Duration
	// otherDown counts samples in which the other group was not Ready.
	otherDown int
	// lost: requests that ended unserved from the kill to 1 s after the
	// group was ready.
	lost int
}

// overhead is Kvasir's share of the recovery against the engines alone
// just before this kill.
func (k kill) overhead() time.Duration { return k.ready - k.engines }

func recovery(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("recovery", flag.ContinueOnError)
	var c common
	c.register(fs, "recovery", "nvidia.com/gpu=4")
	kills := fs.Int("kills", 5, "workers to SIGKILL, one at a time, alternating between the two groups")
	rate := fs.Float64("rate", 15, "non-streamed requests per second, evenly spaced, through the activator")
	maxTokens := fs.Int("max-tokens", 64, "output tokens per request (64: a few hundred ms, so a kill finds requests in flight on the group)")
	settle := fs.Duration("settle", 3*time.Second, "wait after a group is ready again before the next kill")
	every := fs.Duration("sample-interval", 5*time.Millisecond, "how often /kvasir/replicas is polled during a recovery")
	goal := fs.Duration("goal", time.Second, "the most Kvasir may add to the engines' start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kills < 1 || *rate <= 0 {
		return fmt.Errorf("--kills %d, --rate %g: want both positive", *kills, *rate)
	}
	r, err := c.start(ctx)
	failed := true
	defer func() { r.close(failed) }()
	if err != nil {
		return err
	}
	rule, _, err := shapeOf(r, c.accelerators, "nvidia.com/gpu", "CUDA_VISIBLE_DEVICES")
	if err != nil {
		return err
	}
	svc := r.svc.Name
	twoReady := func(st []local.RevisionStatus) bool {
		rev, ok := revision(st, svc)
		return ok && readyGroups(rev) == 2 && len(rev.Replicas) == 2
	}
	if err := r.p.Wait(ctx, c.startTimeout, 50*time.Millisecond, "two ready groups", twoReady); err != nil {
		return err
	}
	baseDir := r.w.LogDir + "/engines-alone"
	if err := os.MkdirAll(baseDir, 0o755); err != nil {
		return err
	}

	l := newLoader(r.p.Base, r.svc.Spec.Model, *maxTokens)
	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan struct{})
	go func() { l.openLoop(lctx, *rate); close(loadDone) }()
	defer func() { stopLoad(); <-loadDone; l.wait() }()
	if err := benchkit.Sleep(ctx, 2*time.Second); err != nil {
		return err
	}

	var ks []kill
	var partial []string
	for i := range *kills {
		k, bad, err := killOne(ctx, r, svc, i, baseDir, *every, rule)
		if err != nil {
			return fmt.Errorf("kill %d: %w", i+1, err)
		}
		partial = append(partial, bad...)
		ks = append(ks, k)
		if err := benchkit.Sleep(ctx, *settle); err != nil {
			return err
		}
	}
	stopLoad()
	<-loadDone
	l.wait()
	for i := range ks {
		ks[i].lost = l.lostBetween(ks[i].at, ks[i].at.Add(ks[i].ready+time.Second))
	}
	if err := r.p.Alive(); err != nil {
		return err
	}
	served, lost, why := l.tally()
	p50, p99, longest := l.latency()
	retries := "-"
	if fams, err := promtest.Scrape(r.p.Admin + "/metrics"); err == nil {
		if v, ok := promtest.Sum(fams, "kvasir_activator_retries_total"); ok {
			retries = fmt.Sprint(v)
		}
	}

	fmt.Printf("Recovery: %s on %s (%d pods x %d accelerator(s) a group, 2 groups), %g non-streamed req/s, %d kills\n",
		svc, c.accelerators, rule.Pods, rule.PerProcess, *rate, *kills)
	fmt.Println("Times from the SIGKILL of a worker. engines alone: the same engine processes started alone just before, to the leader's /health 200.")
	fmt.Println("overhead: ready - engines alone (that run); overhead vs median: ready - the median of the engines-alone runs. The goal takes the larger.")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	col := func(f func(kill) time.Duration) (time.Duration, time.Duration) {
		var ds []time.Duration
		for _, k := range ks {
			ds = append(ds, f(k))
		}
		slices.Sort(ds)
		return ds[len(ds)/2], ds[len(ds)-1]
	}
	medianEngines, _ := col(func(k kill) time.Duration { return k.engines })
	vsMedian := func(k kill) time.Duration { return k.ready - medianEngines }
	fmt.Fprintln(tw, "kill\tgroup\tgone\tnew group started\tready\tfirst answer\tengines alone\toverhead\toverhead vs median\tother group not ready (samples)\tlost")
	for i, k := range ks {
		fmt.Fprintf(tw, "%d\t%s -> %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", i+1, k.victim, k.replacement, ms(k.gone), ms(k.started), ms(k.ready),
			ms(k.firstAnswer), ms(k.engines), ms(k.overhead()), ms(vsMedian(k)), k.otherDown, k.lost)
	}
	for _, agg := range []struct {
		name string
		pick func(time.Duration, time.Duration) time.Duration
	}{{"median", func(m, _ time.Duration) time.Duration { return m }}, {"max", func(_, x time.Duration) time.Duration { return x }}} {
		cell := func(f func(kill) time.Duration) string { return ms(agg.pick(col(f))) }
		fmt.Fprintf(tw, "%s\t\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\n", agg.name, cell(func(k kill) time.Duration { return k.gone }),
			cell(func(k kill) time.Duration { return k.started }), cell(func(k kill) time.Duration { return k.ready }),
			cell(func(k kill) time.Duration { return k.firstAnswer }), cell(func(k kill) time.Duration { return k.engines }),
			cell(kill.overhead), cell(vsMedian))
	}
	_ = tw.Flush()
	otherDown := 0
	for _, k := range ks {
		otherDown += k.otherDown
	}
	fmt.Printf("requests: %d sent, %d served, %d lost (any answer but a 200 chat completion); served in p50 %s, p99 %s, max %s; activator retries %s\n",
		served+lost, served, lost, ms(p50), ms(p99), ms(longest), retries)
	for _, w := range why[:min(len(why), 5)] {
		fmt.Println("  lost:", w)
	}
	for _, p := range partial[:min(len(partial), 10)] {
		fmt.Println("  partial group:", p)
	}

	_, maxPaired := col(kill.overhead)
	_, maxVsMedian := col(vsMedian)
	maxOverhead := max(maxPaired, maxVsMedian)
	var missed []string
	if maxOverhead >= *goal {
		missed = append(missed, fmt.Sprintf("Kvasir's overhead reached %s (goal < %s)", ms(maxOverhead), *goal))
	}
	if lost > 0 {
		missed = append(missed, fmt.Sprintf("%d requests lost (goal 0)", lost))
	}
	if otherDown > 0 {
		missed = append(missed, fmt.Sprintf("the group not killed was not Ready in %d samples", otherDown))
	}
	if len(partial) > 0 {
		missed = append(missed, fmt.Sprintf("%d samples showed a partial group holding devices", len(partial)))
	}
	if len(missed) > 0 {
		return fmt.Errorf("goals missed: %s", strings.Join(missed, "; "))
	}
	failed = false
	return nil
}

// killOne measures the engines alone, then SIGKILLs the last worker of
// the group running longest and follows the recovery.
func killOne(ctx context.Context, r *run, svc string, i int, baseDir string, every time.Duration, rule wholeGroup) (kill, []string, error) {
	var k kill
	st, err := r.p.Replicas()
	if err != nil {
		return k, nil, err
	}
	rev, ok := revision(st, svc)
	if !ok || readyGroups(rev) != 2 || len(rev.Replicas) != 2 {
		return k, nil, fmt.Errorf("want two ready groups before the kill, have %d of %d", readyGroups(rev), len(rev.Replicas))
	}
	reps := slices.Clone(rev.Replicas)
	// The group running longest: each kill breaks another group than the
	// one just recreated.
	slices.SortStableFunc(reps, func(a, b local.ReplicaStatus) int { return a.Started.Compare(b.Started) })
	victim, other := reps[0], reps[1]
	if victim.Group == nil || len(victim.Group.Workers) == 0 {
		return k, nil, fmt.Errorf("%s is not a group", victim.Name)
	}
	pids := []int{victim.EnginePID}
	for _, w := range victim.Group.Workers {
		pids = append(pids, w.PID)
	}
	if k.engines, err = engineStart(ctx, pids, baseDir, fmt.Sprintf("kill%d", i+1)); err != nil {
		return k, nil, fmt.Errorf("engines alone: %w", err)
	}
	k.victim = victim.Name
	worker := victim.Group.Workers[len(victim.Group.Workers)-1]
	t0 := time.Now()
	k.at = t0
	if err := syscall.Kill(worker.PID, syscall.SIGKILL); err != nil {
		return k, nil, fmt.Errorf("SIGKILL worker %d of %s: %w", worker.PID, victim.Name, err)
	}
	var partial []string
	var engineAddr string
	deadline := t0.Add(time.Minute)
	for {
		st, err := r.p.Replicas()
		now := time.Now()
		if err == nil {
			for _, v := range rule.check(st).Violations {
				// A group whose process has exited holds its devices
				// until the rest are killed: that is the runtime tearing
				// it down, not a placement.
				if !strings.Contains(v, "has exited while the group") {
					partial = append(partial, v)
				}
			}
			rev, _ := revision(st, svc)
			gone, otherReady := true, false
			for _, rp := range rev.Replicas {
				switch rp.Name {
				case victim.Name:
					gone = false
				case other.Name:
					otherReady = rp.State == "Ready"
				default:
					k.replacement = rp.Name
					if k.started == 0 && !rp.Started.IsZero() {
						k.started = rp.Started.Sub(t0)
					}
					if rp.State == "Ready" && k.ready == 0 {
						k.ready, engineAddr = now.Sub(t0), rp.EngineAddr
					}
				}
			}
			if gone && k.gone == 0 {
				k.gone = now.Sub(t0)
			}
			if !otherReady {
				k.otherDown++
			}
			if k.ready > 0 {
				break
			}
		}
		if err := r.p.Alive(); err != nil {
			return k, nil, err
		}
		if now.After(deadline) {
			return k, nil, fmt.Errorf("%s was not replaced by a ready group within a minute", victim.Name)
		}
		if err := benchkit.Sleep(ctx, every); err != nil {
			return k, nil, err
		}
	}
	// The broken group's processes are all gone.
	for _, pid := range append(pids, victim.ProxyPID) {
		if syscall.Kill(pid, 0) == nil {
			partial = append(partial, fmt.Sprintf("process %d of the broken group %s still runs after its replacement is ready", pid, victim.Name))
		}
	}
	// The new group's first answer.
	for time.Since(t0) < k.ready+10*time.Second {
		if answered(engineAddr) > 0 {
			k.firstAnswer = time.Since(t0)
			break
		}
		if err := benchkit.Sleep(ctx, 10*time.Millisecond); err != nil {
			return k, nil, err
		}
	}
	return k, partial, nil
}

// ms shows a duration in milliseconds ("-" for none).
func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%d ms", d.Milliseconds())
}

// answered reads the requests an engine has answered in full from its
// vllm:request_success_total, aborted ones left out (0 when it cannot be
// read).
func answered(engineAddr string) float64 {
	fams, err := promtest.Scrape("http://" + engineAddr + "/metrics")
	if err != nil {
		return 0
	}
	f, ok := fams["vllm:request_success_total"]
	if !ok {
		return 0
	}
	n := 0.0
	for _, m := range f.GetMetric() {
		aborted := slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == "finished_reason" && l.GetValue() == "abort"
		})
		if !aborted {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}
