package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/test/bench/internal/localrun"
)

// keyEnv names the environment variable that carries the tenant's key to
// kvasir local (the Tenant's fromEnv); the key is random, per run.
const keyEnv = "KVASIR_BENCH_TENANT_KEY"

// The goals of issue 15.
const (
	servedTolerance = 0.05        // served within 5% of the limit per minute
	failModeBound   = time.Second // the fail mode applies within 1 s
)

// rateLimitFlags are the command line of `tenants ratelimit`.
type rateLimitFlags struct {
	kvasir, redisServer, jsonOut, logDir string
	fail                                 string
	tokensPerMinute                      int64
	overload                             float64
	processes, activators                int // kvasir local processes, activators in each
	duration, killAfter                  time.Duration
	promptBytes, maxTokens               int
	drainConcurrency                     int
	drainTimeout, startTimeout, timeout  time.Duration
}

func parseRateLimitFlags(args []string, stderr io.Writer) (*rateLimitFlags, error) {
	fs := flag.NewFlagSet("tenants ratelimit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &rateLimitFlags{}
	fs.StringVar(&f.kvasir, "kvasir", "", "the kvasir binary (default: go build ./cmd/kvasir into a temporary directory)")
	fs.StringVar(&f.redisServer, "redis-server", "", "the redis-server to run (default: $KVASIR_REDIS_SERVER, redis-server on PATH, or hack/redis-assets.sh's cache)")
	fs.StringVar(&f.jsonOut, "json", "", "also write settings, results and goals as JSON to this file")
	fs.StringVar(&f.logDir, "log-dir", "", "keep the platform's, replicas' and redis-server's logs here (default: a temporary directory, kept only when the run fails)")
	fs.StringVar(&f.fail, "fail", "open,closed", "kvasir local --ratelimit-fail, one round each: open, closed, or both (comma-separated)")
	fs.Int64Var(&f.tokensPerMinute, "tokens-per-minute", 30000, "the tenant's limit N: tokensPerMinute of its one limit rule")
	fs.Float64Var(&f.overload, "overload", 3, "the load, in multiples of N")
	fs.IntVar(&f.processes, "processes", 1, "separate kvasir local processes sharing the one redis-server, the load spread round robin over their APIs")
	fs.IntVar(&f.activators, "activators", 3, "kvasir local --activators of each process (default 3 with --processes 1, else 1)")
	fs.DurationVar(&f.duration, "duration", 2*time.Minute, "how long each round drives the load (after the burst the full bucket allows)")
	fs.DurationVar(&f.killAfter, "kill-after", 90*time.Second, "kill redis-server this long into the round (0: never); the served rate is measured before")
	fs.IntVar(&f.promptBytes, "prompt-bytes", 128, "bytes of each request's prompt (the simulator counts 4 bytes a token)")
	fs.IntVar(&f.maxTokens, "max-tokens", 64, "max_tokens of each request (the simulator generates them all)")
	fs.IntVar(&f.drainConcurrency, "drain-concurrency", 64, "requests in flight while the tenant's full bucket is emptied before the round")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 2*time.Minute, "how long emptying the bucket may take")
	fs.DurationVar(&f.startTimeout, "start-timeout", time.Minute, "how long kvasir local may take to have a ready replica")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "timeout of one request")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	activatorsSet := false
	fs.Visit(func(fl *flag.Flag) { activatorsSet = activatorsSet || fl.Name == "activators" })
	if !activatorsSet && f.processes > 1 {
		f.activators = 1 // one activator a process, as one activator pod each
	}
	var errs []error
	for _, m := range f.modes() {
		if m != failOpen && m != failClosed {
			errs = append(errs, fmt.Errorf("--fail: %q: want open or closed", m))
		}
	}
	if len(f.modes()) == 0 {
		errs = append(errs, errors.New("--fail: at least one of open and closed"))
	}
	if f.tokensPerMinute <= 0 {
		errs = append(errs, fmt.Errorf("--tokens-per-minute: must be > 0, got %d", f.tokensPerMinute))
	}
	if !(f.overload > 1) || math.IsInf(f.overload, 0) {
		errs = append(errs, fmt.Errorf("--overload: must be a finite number > 1, got %v", f.overload))
	}
	if f.processes < 1 || f.processes > maxProcesses {
		errs = append(errs, fmt.Errorf("--processes: must be within 1..%d, got %d", maxProcesses, f.processes))
	}
	if f.activators < 1 || f.activators > maxActivators {
		errs = append(errs, fmt.Errorf("--activators: must be within 1..%d, got %d", maxActivators, f.activators))
	}
	if f.duration <= 0 {
		errs = append(errs, fmt.Errorf("--duration: must be > 0, got %v", f.duration))
	}
	if f.killAfter < 0 || f.killAfter >= f.duration {
		errs = append(errs, fmt.Errorf("--kill-after: must be 0 (never) or within --duration (%v), got %v", f.duration, f.killAfter))
	}
	if f.promptBytes < 1 || f.maxTokens < 1 || f.drainConcurrency < 1 {
		errs = append(errs, errors.New("--prompt-bytes, --max-tokens and --drain-concurrency: must be >= 1"))
	}
	if f.drainTimeout <= 0 || f.startTimeout <= 0 || f.timeout <= 0 {
		errs = append(errs, errors.New("--drain-timeout, --start-timeout and --timeout: must be > 0"))
	}
	return f, errors.Join(errs...)
}

// modes returns the fail modes of --fail, in order, each once.
func (f *rateLimitFlags) modes() []string {
	var out []string
	for _, m := range strings.Split(f.fail, ",") {
		if m = strings.TrimSpace(m); m != "" && !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// Bounds of --processes and --activators: each process runs its own fleet
// and activators on this machine.
const (
	maxProcesses  = 16
	maxActivators = 64
)

// mode says how the activators run: in one process, or in separate ones.
func (f *rateLimitFlags) mode() string {
	if f.processes == 1 {
		return fmt.Sprintf("%d activators in one kvasir local process", f.activators)
	}
	if f.activators == 1 {
		return fmt.Sprintf("%d separate kvasir local processes, 1 activator each", f.processes)
	}
	return fmt.Sprintf("%d separate kvasir local processes, %d activators each", f.processes, f.activators)
}

// goal is one of issue 15's goals, checked.
type goal struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// roundResult is one round: one fail mode.
type roundResult struct {
	Fail string `json:"fail"`
	// RequestTokens is the mean tokens (usage: prompt plus completion) of
	// one allowed request; RateRPS the load that makes Overload x the limit.
	RequestTokens         float64        `json:"request_tokens"`
	RateRPS               float64        `json:"rate_rps"`
	DrivenTokensPerMinute float64        `json:"driven_tokens_per_minute"`
	BurstRequests         int            `json:"burst_requests"` // allowed while the full bucket was emptied
	BurstTokens           float64        `json:"burst_tokens"`
	WindowS               float64        `json:"window_s"` // from the round's first 429 to the kill (or the end)
	ServedTokens          float64        `json:"served_tokens"`
	ServedTokensPerMinute float64        `json:"served_tokens_per_minute"`
	ServedRatio           float64        `json:"served_ratio"` // to the limit
	KillAtS               float64        `json:"kill_at_s,omitempty"`
	FailModeAfterS        *float64       `json:"fail_mode_after_s,omitempty"`
	OverLimitBeforeKill   int            `json:"over_limit_before_kill"` // open: answers the model found beyond the limit before the kill
	UnmeteredAfterKill    int            `json:"unmetered_after_kill"`   // 2xx without x-ratelimit-remaining-tokens
	BeforeKill            map[string]int `json:"before_kill"`            // answers by status
	AfterKill             map[string]int `json:"after_kill,omitempty"`
	Goals                 []goal         `json:"goals"`
	Error                 string         `json:"error,omitempty"`
	// ByProcess is the load's answers by status, before and after the
	// kill, of each kvasir local process in turn.
	ByProcess []processCounts `json:"by_process"`
}

// processCounts is one process's answers by status.
type processCounts struct {
	BeforeKill map[string]int `json:"before_kill"`
	AfterKill  map[string]int `json:"after_kill,omitempty"`
}

// report is the JSON of a run.
type report struct {
	Benchmark       string  `json:"benchmark"`
	TokensPerMinute int64   `json:"tokens_per_minute"`
	Overload        float64 `json:"overload"`
	// Mode says how the activators ran (Processes kvasir local, each
	// with Activators activators).
	Mode        string        `json:"mode"`
	Processes   int           `json:"processes"`
	Activators  int           `json:"activators"` // of each process
	DurationS   float64       `json:"duration_s"`
	KillAfterS  float64       `json:"kill_after_s"`
	PromptBytes int           `json:"prompt_bytes"`
	MaxTokens   int           `json:"max_tokens"`
	Rounds      []roundResult `json:"rounds"`
}

func rateLimit(ctx context.Context, args []string) error {
	f, err := parseRateLimitFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	redisBin, err := findRedis(f.redisServer)
	if err != nil {
		return err
	}
	w, err := localrun.NewWorkdir(ctx, "kvasir-tenants-", f.kvasir, f.logDir)
	if err != nil {
		return err
	}
	// A failed run keeps the whole directory: its rounds' fleet files too.
	w.Kept = w.Tmp
	keep := false
	defer func() { w.Close(keep) }()
	rep := report{Benchmark: "ratelimit", TokensPerMinute: f.tokensPerMinute, Overload: f.overload,
		Mode: f.mode(), Processes: f.processes, Activators: f.activators,
		DurationS: f.duration.Seconds(), KillAfterS: f.killAfter.Seconds(), PromptBytes: f.promptBytes, MaxTokens: f.maxTokens}
	var failed []string
	for _, mode := range f.modes() {
		res, err := runRound(ctx, f, w, redisBin, filepath.Join(w.LogDir, "fail-"+mode), mode)
		if err != nil {
			res.Error = err.Error()
			failed = append(failed, fmt.Sprintf("fail %s: %v", mode, err))
			keep = true
		}
		for _, g := range res.Goals {
			if !g.Met {
				failed = append(failed, fmt.Sprintf("fail %s: %s: want %s, got %s", mode, g.Name, g.Want, g.Got))
				keep = true
			}
		}
		rep.Rounds = append(rep.Rounds, res)
		if ctx.Err() != nil {
			break
		}
	}
	writeTable(os.Stdout, &rep)
	if f.jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(f.jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("goals missed or rounds failed:\n  %s", strings.Join(failed, "\n  "))
	}
	return nil
}

// fleetFile is the fleet of a round: a simulated model and one Tenant with
// a key from keyEnv and a limit of tokens per minute on every model.
func fleetFile(tokensPerMinute int64) string {
	return fmt.Sprintf(`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine: {type: sim}
    scaling: {minScale: 1, maxScale: 1, initialScale: 1}
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: limited}
spec:
  apiKeys:
    - fromEnv: %s
  limits:
    - {model: "*", tokensPerMinute: %d}
`, keyEnv, tokensPerMinute)
}

// runRound runs one fail mode: redis-server, kvasir local, the burst
// drained, the load with redis-server killed mid-way, and the analysis.
func runRound(ctx context.Context, f *rateLimitFlags, w *localrun.Workdir, redisBin, logDir, mode string) (roundResult, error) {
	res := roundResult{Fail: mode}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return res, err
	}
	fmt.Fprintf(os.Stderr, "== fail %s: redis-server %s\n", mode, redisBin)
	redis, err := startRedis(redisBin, filepath.Join(logDir, "redis-server.log"))
	if err != nil {
		return res, err
	}
	defer redis.kill()
	file := filepath.Join(w.Tmp, "fleet-"+mode+".yaml")
	if err := os.WriteFile(file, []byte(fleetFile(f.tokensPerMinute)), 0o644); err != nil {
		return res, err
	}
	var raw [24]byte
	_, _ = rand.Read(raw[:])
	key := "sk-bench-" + hex.EncodeToString(raw[:])
	ps, err := startPlatforms(ctx, w, f.processes, file, logDir, []string{"--activators", strconv.Itoa(f.activators),
		"--ratelimit-redis", redis.addr, "--ratelimit-fail", mode}, []string{keyEnv + "=" + key}, f.startTimeout)
	defer localrun.StopAll(ps)
	if err != nil {
		return res, err
	}

	l := newLoader(ps.bases(), "demo", key, f.promptBytes, f.maxTokens, f.timeout)
	defer l.close()
	fmt.Fprintf(os.Stderr, "emptying the tenant's bucket (%d tokens) at %d in flight\n", f.tokensPerMinute, f.drainConcurrency)
	burst, err := l.drain(ctx, f.drainConcurrency, f.drainTimeout)
	if err != nil {
		return res, err
	}
	cost, ok := meanCost(burst)
	if !ok {
		return res, errors.New("no allowed request reported its usage while the bucket was emptied")
	}
	for _, r := range burst {
		if ok2xx(r) {
			res.BurstRequests++
		}
	}
	res.BurstTokens = servedIn(burst, 0, math.MaxInt64, cost)
	res.RequestTokens = cost
	res.RateRPS = f.overload * float64(f.tokensPerMinute) / cost / 60
	res.DrivenTokensPerMinute = res.RateRPS * 60 * cost
	fmt.Fprintf(os.Stderr, "burst: %d requests, %.0f tokens; driving %.2f req/s of %.0f tokens (%.0f tokens/min) for %v, redis-server killed at %v\n",
		res.BurstRequests, res.BurstTokens, res.RateRPS, cost, res.DrivenTokensPerMinute, f.duration, f.killAfter)

	var kill func()
	if f.killAfter > 0 {
		kill = func() {
			redis.kill()
			fmt.Fprintln(os.Stderr, "redis-server killed")
		}
	}
	recs, killAt := l.openLoop(ctx, res.RateRPS, f.duration, f.killAfter, kill)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := ps.alive(); err != nil {
		return res, err
	}
	analyze(&res, recs, f, cost, killAt)
	return res, nil
}

// analyze fills the round's figures and goals from its records.
func analyze(res *roundResult, recs []record, f *rateLimitFlags, cost float64, killAt time.Duration) {
	end := time.Duration(math.MaxInt64)
	if killAt > 0 {
		end = killAt
		res.KillAtS = killAt.Seconds()
	}
	res.BeforeKill = statusCounts(recs, 0, end)
	res.ByProcess = make([]processCounts, f.processes)
	for i := range res.ByProcess {
		own := processRecords(recs, i)
		res.ByProcess[i].BeforeKill = statusCounts(own, 0, end)
		if killAt > 0 {
			res.ByProcess[i].AfterKill = statusCounts(own, killAt, math.MaxInt64)
		}
	}
	start, denied := firstDenial(recs)
	windowEnd := end
	if killAt == 0 {
		windowEnd = f.duration
	}
	served := goal{Name: "tokens served per minute", Want: fmt.Sprintf("within %.0f%% of %d", servedTolerance*100, f.tokensPerMinute)}
	if denied && windowEnd > start {
		res.WindowS = (windowEnd - start).Seconds()
		res.ServedTokens = servedIn(recs, start, windowEnd, cost)
		res.ServedTokensPerMinute = res.ServedTokens / (windowEnd - start).Minutes()
		res.ServedRatio = res.ServedTokensPerMinute / float64(f.tokensPerMinute)
		served.Got = fmt.Sprintf("%.0f (%.3fx) over %.1f s", res.ServedTokensPerMinute, res.ServedRatio, res.WindowS)
		served.Met = math.Abs(res.ServedRatio-1) <= servedTolerance
	} else {
		served.Got = "no 429 before the kill: the limit was not enforced"
	}
	res.Goals = append(res.Goals, served)
	if killAt == 0 {
		return
	}
	res.AfterKill = statusCounts(recs, killAt, math.MaxInt64)
	for _, r := range recs {
		if r.answered >= killAt && ok2xx(r) && !r.metered {
			res.UnmeteredAfterKill++
		}
	}
	after, seen, before := failModeSeen(recs, res.Fail, killAt, f.tokensPerMinute, 2*cost, cost)
	res.OverLimitBeforeKill = before
	g := goal{Name: "fail mode after the kill", Want: fmt.Sprintf("within %v", failModeBound)}
	what := "a 503"
	if res.Fail == failOpen {
		what = "a request beyond the limit allowed"
	}
	if seen {
		s := after.Seconds()
		res.FailModeAfterS = &s
		g.Got = fmt.Sprintf("%s after %.3f s", what, s)
		g.Met = after <= failModeBound
	} else {
		g.Got = "never: no " + strings.TrimPrefix(what, "a ")
	}
	res.Goals = append(res.Goals, g)
}

// writeTable writes the rounds for humans.
func writeTable(w io.Writer, rep *report) {
	fmt.Fprintf(w, "tenant limited to %d tokens/min, driven at %gx through %s, sharing one redis-server\n",
		rep.TokensPerMinute, rep.Overload, rep.Mode)
	fmt.Fprintf(w, "%-6s %11s %11s %11s %7s %8s %14s %-22s %s\n", "fail", "driven/min", "served/min", "window_s", "ratio", "burst",
		"fail_mode_s", "before kill", "after kill")
	for _, r := range rep.Rounds {
		failMode := "-"
		if r.FailModeAfterS != nil {
			failMode = fmt.Sprintf("%.3f", *r.FailModeAfterS)
		}
		fmt.Fprintf(w, "%-6s %11.0f %11.0f %11.1f %7.3f %8.0f %14s %-22s %s\n", r.Fail, r.DrivenTokensPerMinute, r.ServedTokensPerMinute,
			r.WindowS, r.ServedRatio, r.BurstTokens, failMode, counts(r.BeforeKill), counts(r.AfterKill))
	}
	if rep.Processes > 1 {
		for _, r := range rep.Rounds {
			for i, pc := range r.ByProcess {
				fmt.Fprintf(w, "fail %s: process %d: before kill %s, after kill %s\n", r.Fail, i, counts(pc.BeforeKill), counts(pc.AfterKill))
			}
		}
	}
	for _, r := range rep.Rounds {
		if r.Error != "" {
			fmt.Fprintf(w, "fail %s: error: %s\n", r.Fail, r.Error)
		}
		for _, g := range r.Goals {
			mark := "met"
			if !g.Met {
				mark = "MISSED"
			}
			fmt.Fprintf(w, "fail %s: %s: want %s, got %s: %s\n", r.Fail, g.Name, g.Want, g.Got, mark)
		}
		if r.Fail == failOpen && r.OverLimitBeforeKill > 0 {
			fmt.Fprintf(w, "fail %s: %d answers beyond the limit before the kill (the client's model of the limit disagrees)\n", r.Fail, r.OverLimitBeforeKill)
		}
	}
}

// counts renders answers by status, sorted: "2xx:10 429:20".
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
