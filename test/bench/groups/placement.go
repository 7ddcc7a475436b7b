package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// shapeOf is the whole-group rule of a grouped service on one resource of
// an inventory.
func shapeOf(tmplSvc *run, inventory, resource, devicesVar string) (wholeGroup, autoscaler.Variant, error) {
	vs := autoscaler.RoleVariantsOf(&tmplSvc.svc.Spec.Template, fleet.RoleUnified)
	if len(vs) != 1 || vs[0].Pods < 2 || vs[0].Need[resource] == 0 {
		return wholeGroup{}, autoscaler.Variant{}, fmt.Errorf("%s: want one placement of a group of several pods taking %s, found %+v", tmplSvc.svc.Name, resource, vs)
	}
	inv, err := autoscaler.ParseInventory(inventory)
	if err != nil {
		return wholeGroup{}, autoscaler.Variant{}, fmt.Errorf("--accelerators: %w", err)
	}
	v := vs[0]
	return wholeGroup{Pods: v.Pods, PerProcess: v.Need[resource] / v.Pods, Inventory: inv.Free()[resource], DevicesVar: devicesVar}, v, nil
}

// sampler polls /kvasir/replicas and checks every sample.
type sampler struct {
	p     *run
	rule  wholeGroup
	every time.Duration

	mu          sync.Mutex
	samples     int
	errors      int // failed reads
	violations  []string
	nViolations int
	maxHolding  int
	maxHeld     int
	procs       procCheck
	// settled: the first sample with the goal's placement (Desired
	// placed, Unplaceable reported, all placed ready).
	settled    time.Time
	settledSt  local.RevisionStatus
	wantPlaced int
	wantUnpl   int
}

func (s *sampler) run(ctx context.Context) {
	for ctx.Err() == nil {
		st, err := s.p.p.Replicas()
		now := time.Now()
		s.mu.Lock()
		if err != nil {
			s.errors++
		} else {
			s.samples++
			c := s.rule.check(st)
			bad := append(c.Violations, s.procs.check(st, s.rule)...)
			s.nViolations += len(bad)
			for _, b := range bad {
				if len(s.violations) < 20 {
					s.violations = append(s.violations, now.Format("15:04:05.000")+" "+b)
				}
			}
			s.maxHolding = max(s.maxHolding, c.Holding)
			s.maxHeld = max(s.maxHeld, c.Held)
			if rev, ok := revision(st, s.p.svc.Name); ok && s.settled.IsZero() &&
				rev.Desired == s.wantPlaced && rev.Unplaceable == s.wantUnpl && readyGroups(rev) == s.wantPlaced {
				s.settled, s.settledSt = now, rev
			}
		}
		s.mu.Unlock()
		_ = benchkit.Sleep(ctx, s.every)
	}
}

// wantedRE reads the scaler's log line about what does not fit.
var wantedRE = regexp.MustCompile(`not enough accelerators for the replicas the autoscaler wants.* wanted=(\d+) placeable=(\d+)`)

func placement(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("placement", flag.ContinueOnError)
	var c common
	c.register(fs, "placement", "nvidia.com/gpu=7")
	burst := fs.Int("burst", 40, "requests kept in flight during the burst (the ModelService's target is 8 a group: 40 asks for 5)")
	burstFor := fs.Duration("burst-for", 25*time.Second, "how long the burst lasts")
	every := fs.Duration("sample-interval", 20*time.Millisecond, "how often /kvasir/replicas is sampled and checked")
	want := fs.Int("want", 5, "groups the burst asks for (the decision: maxScale bounds it)")
	fits := fs.Int("fits", 3, "whole groups the inventory holds")
	if err := fs.Parse(args); err != nil {
		return err
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
	if err := r.p.Wait(ctx, c.startTimeout, 50*time.Millisecond, "a ready group", func(st []local.RevisionStatus) bool {
		rev, ok := revision(st, svc)
		return ok && readyGroups(rev) >= 1
	}); err != nil {
		return err
	}

	s := &sampler{p: r, rule: rule, every: *every, wantPlaced: *fits, wantUnpl: *want - *fits}
	sctx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	sampling.Go(func() { s.run(sctx) })
	defer func() { stopSampling(); sampling.Wait() }()

	l := newLoader(r.p.Base, r.svc.Spec.Model, 64)
	start := time.Now()
	bctx, stopBurst := context.WithTimeout(ctx, *burstFor)
	l.closedLoop(bctx, *burst)
	<-bctx.Done()
	stopBurst()
	if err := ctx.Err(); err != nil {
		return err
	}
	// What the metric says, while the burst's decision still holds.
	unplMetric, unplFound, scrapeErr := promtest.ScrapeValue(r.p.Admin+"/metrics", "kvasir_revision_unplaceable_replicas",
		map[string]string{"service": svc})
	st, stErr := r.p.Replicas()
	l.wait()
	_ = benchkit.Sleep(ctx, time.Second) // a few more samples after the burst
	stopSampling()
	sampling.Wait()
	if err := r.p.Alive(); err != nil {
		return err
	}

	served, lost, why := l.tally()
	wanted, placeable := "-", "-"
	if m := wantedRE.FindAllStringSubmatch(readFile(r.p.LogFile), -1); len(m) > 0 {
		wanted, placeable = m[len(m)-1][1], m[len(m)-1][2]
	}
	var end local.RevisionStatus
	if stErr == nil {
		end, _ = revision(st, svc)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	settledIn := "never"
	if !s.settled.IsZero() {
		settledIn = s.settled.Sub(start).Round(time.Millisecond).String()
	}
	metric := "-"
	if scrapeErr == nil && unplFound {
		metric = strconv.FormatFloat(unplMetric, 'f', -1, 64)
	}

	fmt.Printf("Placement: %s on %s (%d pods x %d accelerator(s) a group: %d whole groups fit), a burst of %d in flight for %s\n",
		svc, c.accelerators, rule.Pods, rule.PerProcess, *fits, *burst, *burstFor)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "measure\tvalue\tgoal")
	fmt.Fprintf(tw, "groups the autoscaler wanted (its log: wanted=, placeable=)\t%s, %s\t%d, %d\n", wanted, placeable, *want, *fits)
	fmt.Fprintf(tw, "placed (/kvasir/replicas desired) at the burst's end\t%d\t%d\n", end.Desired, *fits)
	fmt.Fprintf(tw, "unplaceable (/kvasir/replicas) at the burst's end\t%d\t%d\n", end.Unplaceable, *want-*fits)
	fmt.Fprintf(tw, "kvasir_revision_unplaceable_replicas at the burst's end\t%s\t%d\n", metric, *want-*fits)
	fmt.Fprintf(tw, "ready groups at the burst's end\t%d\t%d\n", readyGroups(end), *fits)
	fmt.Fprintf(tw, "from the burst to %d placed, ready, and %d unplaceable\t%s\t\n", *fits, *want-*fits, settledIn)
	fmt.Fprintf(tw, "samples of /kvasir/replicas (every %s; failed reads)\t%d (%d)\t\n", *every, s.samples, s.errors)
	fmt.Fprintf(tw, "processes whose /proc environment was checked\t%d\t\n", s.procs.Checked)
	fmt.Fprintf(tw, "most groups holding devices at once; most devices held\t%d; %d\t<= %d; <= %d\n", s.maxHolding, s.maxHeld, *fits, rule.Inventory)
	fmt.Fprintf(tw, "samples with a partial group holding devices (violations)\t%d\t0\n", s.nViolations)
	fmt.Fprintf(tw, "requests served / failed (not a goal here)\t%d / %d\t\n", served, lost)
	_ = tw.Flush()
	for _, v := range s.violations {
		fmt.Println("  violation:", v)
	}
	if lost > 0 {
		fmt.Println("  failures:", strings.Join(why[:min(len(why), 5)], "; "))
	}

	var missed []string
	if stErr != nil || end.Desired != *fits || end.Unplaceable != *want-*fits {
		missed = append(missed, fmt.Sprintf("at the burst's end %d placed and %d unplaceable, want %d and %d (read error: %v)", end.Desired, end.Unplaceable, *fits, *want-*fits, stErr))
	}
	if metric != strconv.Itoa(*want-*fits) {
		missed = append(missed, fmt.Sprintf("kvasir_revision_unplaceable_replicas %s, want %d (scrape error: %v)", metric, *want-*fits, scrapeErr))
	}
	if s.settled.IsZero() {
		missed = append(missed, fmt.Sprintf("no sample showed %d ready groups placed and %d unplaceable", *fits, *want-*fits))
	}
	if s.maxHolding > *fits || s.maxHeld > rule.Inventory {
		missed = append(missed, fmt.Sprintf("%d groups held devices at once (%d devices)", s.maxHolding, s.maxHeld))
	}
	if s.nViolations > 0 {
		missed = append(missed, fmt.Sprintf("%d partial-group violations", s.nViolations))
	}
	if s.samples < 100 {
		missed = append(missed, fmt.Sprintf("only %d samples", s.samples))
	}
	if len(missed) > 0 {
		return fmt.Errorf("goals missed: %s", strings.Join(missed, "; "))
	}
	failed = false
	return nil
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}
