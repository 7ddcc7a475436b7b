package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/local"
)

// Listening is where a launched fleet serves: the address (host:port) of
// its OpenAI API and that of its admin endpoints (/kvasir/replicas).
type Listening struct{ API, Admin string }

// LaunchSpec is one strategy's fleet, as a Launcher runs it.
type LaunchSpec struct {
	// File is the fleet file: the ModelService and Tenant documents.
	File string
	// LogDir receives the replicas' logs.
	LogDir string
	// Args are the strategy's extra flags of `kvasir local`
	// (Strategy.Args), verbatim.
	Args []string
}

// Launcher runs strategies' fleets on this machine.
type Launcher interface {
	// Launch runs the fleet of spec until ctx ends, calling onListen with
	// its addresses once it serves, and returns only after every replica
	// has stopped.
	Launch(ctx context.Context, spec LaunchSpec, onListen func(Listening)) error
}

// ArgsChecker is a Launcher that can tell, before any fleet runs, whether it
// can apply a strategy's args; Compare then checks every strategy's first.
type ArgsChecker interface {
	CheckArgs(args []string) error
}

// LocalFlags binds the flags of `kvasir local` to o on fs, as its command
// line does (pkg/cli provides it, so that a strategy's args mean exactly
// what they mean there), and returns what to run once they are parsed: the
// checks of the values and their copies into o (nil: nothing).
type LocalFlags func(fs *flag.FlagSet, o *local.Options) (parsed func() error)

// LocalFleets is the Launcher of `kvasir bench compare`: it runs each fleet
// in-process with `kvasir local` (local.Run) on free loopback ports.
type LocalFleets struct {
	// Self is the argv prefix that runs the kvasir binary (nil: this
	// executable).
	Self []string
	// Activators is how many activator replicas each fleet runs.
	Activators int
	// Logger receives the platform's logs.
	Logger *slog.Logger
	// Flags binds the flags a strategy's args may set; nil: a strategy
	// with args fails (this launcher cannot apply them).
	Flags LocalFlags
}

// LocalLauncher returns the LocalFleets of self, activators and logger,
// without Flags (see WithFlags).
func LocalLauncher(self []string, activators int, logger *slog.Logger) *LocalFleets {
	return &LocalFleets{Self: self, Activators: activators, Logger: logger}
}

// WithFlags sets the binder of the flags strategies' args may set and
// returns l.
func (l *LocalFleets) WithFlags(flags LocalFlags) *LocalFleets {
	l.Flags = flags
	return l
}

// CheckArgs parses args as Launch will, into options that are thrown away.
func (l *LocalFleets) CheckArgs(args []string) error {
	var opts local.Options
	opts.Activator = activator.DefaultConfig()
	return l.parseArgs(args, &opts)
}

// parseArgs applies args to opts with l.Flags; with Flags set it binds and
// parses even no args, so that every strategy's options are built the same
// way, as `kvasir local` builds them. Each arg is one --name or
// --name=value (checkArgs); a flag that takes a value must have it after
// "=", so that no arg is taken as the value of the one before.
func (l *LocalFleets) parseArgs(args []string, opts *local.Options) error {
	if err := checkArgs("args", args); err != nil {
		return err
	}
	if l.Flags == nil {
		if len(args) == 0 {
			return nil
		}
		return fmt.Errorf("args %s: this launcher cannot apply flags of kvasir local", strings.Join(args, " "))
	}
	fs := flag.NewFlagSet("kvasir local", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	parsed := l.Flags(fs, opts)
	for i, a := range args {
		name, _ := argName(a)
		f := fs.Lookup(name)
		if f == nil {
			return fmt.Errorf("args[%d]: %q: kvasir local has no flag --%s", i, a, name)
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); (!ok || !b.IsBoolFlag()) && !strings.Contains(a, "=") {
			return fmt.Errorf("args[%d]: %q: --%s takes a value: write --%s=VALUE", i, a, name, name)
		}
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("args %s: %w", strings.Join(args, " "), err)
	}
	if parsed != nil {
		if err := parsed(); err != nil {
			return fmt.Errorf("args %s: %w", strings.Join(args, " "), err)
		}
	}
	return nil
}

// Launch runs the fleet of spec with local.Run on 127.0.0.1 at free ports,
// with spec.Args applied over the defaults.
func (l *LocalFleets) Launch(ctx context.Context, spec LaunchSpec, onListen func(Listening)) error {
	opts := local.Options{Activator: activator.DefaultConfig()}
	if err := l.parseArgs(spec.Args, &opts); err != nil {
		return err
	}
	var api string
	// What compare decides, whatever the args bound.
	opts.Activators = l.Activators
	opts.File, opts.LogDir = spec.File, spec.LogDir
	opts.Addr, opts.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	opts.Self, opts.Logger = l.Self, l.Logger
	opts.OnListen = func(addr string) { api = addr }
	opts.OnAdminListen = func(addr string) { onListen(Listening{API: api, Admin: addr}) }
	return local.Run(ctx, opts)
}

// CompareOptions configure Compare.
type CompareOptions struct {
	// Launch runs one strategy's fleet. Required.
	Launch Launcher
	// Dir receives, per strategy, a directory NN-NAME with the fleet file
	// (fleet.yaml) and the replicas' logs (logs/). Required.
	Dir string
	// Progress receives one line per step (nil: discarded).
	Progress io.Writer
	// PollInterval is the period of the readiness check (default 100ms).
	PollInterval time.Duration
}

// StrategyResult is the outcome of one strategy. Result is nil when the
// workload never ran (the fleet did not start or get ready); Err is set when
// the strategy failed.
type StrategyResult struct {
	Strategy Strategy
	Result   *Result
	Err      error
}

// Failed reports whether the strategy failed.
func (r StrategyResult) Failed() bool { return r.Err != nil }

// Report is the outcome of a comparison: one entry per strategy run, in
// order.
type Report struct {
	Benchmark string
	Results   []StrategyResult
}

// Failed returns the names of the strategies that failed.
func (r *Report) Failed() []string {
	var out []string
	for _, s := range r.Results {
		if s.Failed() {
			out = append(out, s.Strategy.Name)
		}
	}
	return out
}

// Compare runs c's workload once per strategy, each on a fresh fleet: it
// writes the strategy's fleet, launches it, waits until every revision has
// its minScale/initialScale replicas ready, runs the workload against it,
// and stops the fleet (every replica gone) before the next strategy. A
// strategy that fails is reported with its error and the others still run.
// When ctx is cancelled, Compare stops the running strategy and returns the
// report so far with ctx's error.
func Compare(ctx context.Context, c *Comparison, strategies []Strategy, opts CompareOptions) (*Report, error) {
	if opts.Launch == nil {
		return nil, errors.New("bench compare: no launcher")
	}
	if opts.Dir == "" {
		return nil, errors.New("bench compare: no directory for the fleets")
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if ac, ok := opts.Launch.(ArgsChecker); ok {
		for _, s := range strategies {
			if len(s.Args) == 0 {
				continue
			}
			if err := ac.CheckArgs(s.Args); err != nil {
				return nil, fmt.Errorf("bench compare: strategy %q: %w", s.Name, err)
			}
		}
	}
	rep := &Report{Benchmark: c.Name}
	for i, s := range strategies {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		p := func(format string, args ...any) {
			fmt.Fprintf(opts.Progress, "[%d/%d] %s: %s\n", i+1, len(strategies), s.Name, fmt.Sprintf(format, args...))
		}
		dir := filepath.Join(opts.Dir, fmt.Sprintf("%02d-%s", i+1, fileSafe(s.Name)))
		r := runStrategy(ctx, c, s, dir, opts, p)
		rep.Results = append(rep.Results, r)
		if err := ctx.Err(); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// runStrategy runs one strategy from start to finish; the fleet has stopped
// when it returns.
func runStrategy(ctx context.Context, c *Comparison, s Strategy, dir string, opts CompareOptions, p func(string, ...any)) StrategyResult {
	out := StrategyResult{Strategy: s}
	fail := func(err error) StrategyResult {
		out.Err = err
		p("FAILED: %v", err)
		return out
	}
	fleetYAML, err := c.FleetYAML(s)
	if err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(fmt.Errorf("fleet directory: %w", err))
	}
	file := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(file, fleetYAML, 0o644); err != nil {
		return fail(fmt.Errorf("fleet file: %w", err))
	}

	spec := LaunchSpec{File: file, LogDir: filepath.Join(dir, "logs"), Args: s.Args}
	if len(s.Args) > 0 {
		p("starting the fleet (%s; %s; kvasir local %s)", describeFleet(c.Fleet), file, strings.Join(s.Args, " "))
	} else {
		p("starting the fleet (%s; %s)", describeFleet(c.Fleet), file)
	}
	start := time.Now()
	f := launch(ctx, opts.Launch, spec)
	// Whatever happens next, the fleet is stopped before returning.
	defer func() {
		running, stopping := !f.exited, time.Now()
		err := f.stop()
		if running {
			p("fleet stopped in %.1fs", time.Since(stopping).Seconds())
		}
		if running && err != nil && out.Err == nil {
			out.Err = fmt.Errorf("stopping the fleet: %w", err)
			p("FAILED: %v", out.Err)
		}
	}()

	addrs, err := f.listening(ctx, c.WarmupTimeout)
	if err != nil {
		return fail(err)
	}
	base := "http://" + addrs.API
	if err := waitReady(ctx, f, "http://"+addrs.Admin, c.Fleet, start.Add(c.WarmupTimeout), opts.PollInterval); err != nil {
		return fail(err)
	}
	p("fleet ready in %.1fs at %s", time.Since(start).Seconds(), base)

	cfg := c.StrategyConfig(s)
	cfg.Target = base
	r := cfg.Resolved()
	if len(r.Tenants) > 0 {
		p("running %d tenants' requests (+%d warm-up each)", len(r.Tenants), r.Warmup)
	} else {
		p("running %d %s requests (+%d warm-up)", r.NumPrompts, r.Workload, r.Warmup)
	}
	res, runErr := Run(ctx, cfg)
	out.Result = res
	switch {
	case runErr != nil:
		return fail(runErr)
	case res.Completed == 0 && res.Errors > 0:
		msg := fmt.Sprintf("all %d requests failed", res.Errors)
		if len(res.ErrorExamples) > 0 {
			msg += ", e.g.: " + res.ErrorExamples[0].Message
		}
		return fail(errors.New(msg))
	}
	p("%d completed, %d errors in %.1fs: %.2f req/s, %.1f output tok/s, mean TTFT %.3fs, cache hit ratio %.3f",
		res.Completed, res.Errors, res.DurationS, res.ThroughputRPS, res.OutputTokensPerS, res.TTFTMeanS, res.CacheHitRatio)
	return out
}

// runningFleet is a launched fleet.
type runningFleet struct {
	cancel context.CancelFunc
	addr   chan Listening
	done   chan error
	exited bool
	err    error // the launcher's, once exited
}

func launch(ctx context.Context, l Launcher, spec LaunchSpec) *runningFleet {
	fctx, cancel := context.WithCancel(ctx)
	f := &runningFleet{cancel: cancel, addr: make(chan Listening, 1), done: make(chan error, 1)}
	go func() {
		f.done <- l.Launch(fctx, spec, func(addrs Listening) {
			select {
			case f.addr <- addrs:
			default:
			}
		})
	}()
	return f
}

// exit records the launcher's return.
func (f *runningFleet) exit(err error) error {
	f.exited, f.err = true, err
	if err == nil {
		return errors.New("the fleet stopped unexpectedly")
	}
	return fmt.Errorf("the fleet stopped: %w", err)
}

// listening waits for the fleet's addresses.
func (f *runningFleet) listening(ctx context.Context, timeout time.Duration) (Listening, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case addrs := <-f.addr:
		return addrs, nil
	case err := <-f.done:
		return Listening{}, f.exit(err)
	case <-t.C:
		return Listening{}, fmt.Errorf("the fleet did not start serving within %v (spec.warmupTimeout)", timeout)
	case <-ctx.Done():
		return Listening{}, ctx.Err()
	}
}

// stop cancels the fleet and waits for the launcher to return.
func (f *runningFleet) stop() error {
	f.cancel()
	if !f.exited {
		f.exited, f.err = true, <-f.done
	}
	return f.err
}

// waitReady polls GET {base}/kvasir/replicas until every revision role of the
// fleet has at least its minScale/initialScale replicas ready.
func waitReady(ctx context.Context, f *runningFleet, base string, fleet []*v1alpha1.ModelService, deadline time.Time, interval time.Duration) error {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	timeout := time.NewTimer(time.Until(deadline))
	defer timeout.Stop()
	last := "no answer from /kvasir/replicas yet"
	for {
		revs, err := getReplicas(ctx, hc, base)
		if err == nil {
			var ok bool
			ok, last = fleetReady(fleet, revs)
			if ok {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-tick.C:
		case err := <-f.done:
			return f.exit(err)
		case <-timeout.C:
			return fmt.Errorf("the fleet was not ready within the warm-up timeout (spec.warmupTimeout): %s", last)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func getReplicas(ctx context.Context, hc *http.Client, base string) ([]local.RevisionStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/kvasir/replicas", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /kvasir/replicas: HTTP %d", resp.StatusCode)
	}
	var revs []local.RevisionStatus
	if err := json.NewDecoder(resp.Body).Decode(&revs); err != nil {
		return nil, fmt.Errorf("GET /kvasir/replicas: %w", err)
	}
	return revs, nil
}

// fleetReady reports whether every service of the fleet is listed and each
// of its revision roles has its expected replicas ready, and if not, what
// is missing.
func fleetReady(svcs []*v1alpha1.ModelService, revs []local.RevisionStatus) (bool, string) {
	var missing []string
	for _, ms := range svcs {
		listed := false
		for _, rev := range revs {
			if rev.Service != ms.Name {
				continue
			}
			listed = true
			if want := expectedReplicas(ms, rev.Role); rev.Ready < want {
				missing = append(missing, fmt.Sprintf("%s (%s): %d of %d replicas ready", rev.Revision, rev.Role, rev.Ready, want))
			}
		}
		if !listed {
			missing = append(missing, fmt.Sprintf("ModelService %q: no revision listed", ms.Name))
		}
	}
	return len(missing) == 0, strings.Join(missing, "; ")
}

// expectedReplicas is what a revision role (its label in the replica
// report) starts with, as the platform computes it: initialScale raised to
// minScale and capped at maxScale (when set).
func expectedReplicas(ms *v1alpha1.ModelService, role string) int {
	return autoscaler.InitialScale(ms.Spec.Template.RoleScaling(fleet.RoleOfLabel(role)), 0)
}

// describeFleet summarises a fleet for progress lines.
func describeFleet(svcs []*v1alpha1.ModelService) string {
	parts := make([]string, 0, len(svcs))
	for _, ms := range svcs {
		n := expectedReplicas(ms, fleet.RoleLabelUnified)
		unit := "replicas"
		if n == 1 {
			unit = "replica"
		}
		parts = append(parts, fmt.Sprintf("%s: %d %s", ms.Name, n, unit))
	}
	return strings.Join(parts, ", ")
}

// fileSafe maps a strategy name to a file name.
func fileSafe(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.', r == '+':
			return r
		}
		return '_'
	}, name)
}
