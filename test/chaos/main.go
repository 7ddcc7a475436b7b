// Command chaos hits a running Kvasir with faults under steady load and
// counts what its clients saw (issue 11, "Faults under load, counted"; the
// numbers are in docs/benchmarks.md):
//
//	make build && go run ./test/chaos --before 15s --after 30s
//
// It runs `kvasir local --activators 3` with a simulated model of three
// replicas, slowed down (--time-scale) so that requests are in flight when a
// fault hits, and, one fault after the other, each on its own steady load
// of streamed and non-streamed chat completions:
//
//   - through kvasir local's own port: SIGKILL an engine, SIGKILL a
//     queue-proxy, SIGTERM (drain) an engine, SIGTERM a queue-proxy; the
//     victim is the replica whose engine runs the most requests, and the
//     phase goes on once the fleet has replaced it;
//   - through three activator processes in front of the same queue-proxies,
//     requests spread round-robin as a Kubernetes Service does, one
//     connection each: an activator whose /healthz answers 503 leaves the
//     rotation (the Service follows readiness), and a refused connection is
//     an endpoint already removed (the request goes to the next one and
//     counts as re-routed). SIGKILL an activator, then SIGTERM one; the
//     victim has requests of both kinds in flight, and a drained one must
//     fail its readiness before it stops accepting.
//
// Goals (anchor: Knative's activator HA test, 100% success on graceful
// removal, at least 90% on SIGKILL): a drain loses nothing; after SIGKILL of
// an engine or a queue-proxy every non-streamed request succeeds (retried on
// another replica) and every broken stream ends with an error event; after
// SIGKILL of an activator only the requests it had in flight fail; nothing
// hangs. Every count is observed: each request's endpoint, start, end and
// outcome are recorded, and the goal is judged request by request. It prints
// a Markdown table and exits 1 when a goal is not met.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}

// run parses the flags, runs every fault and prints the table.
func run(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory with the built kvasir and activator binaries (make build)")
	before := fs.Duration("before", 15*time.Second, "load before each fault")
	after := fs.Duration("after", 30*time.Second, "load after the fleet recovered from each fault")
	conc := fs.Int("concurrency", 12, "clients, each sending its next request when its last one ended")
	streamFrac := fs.Float64("stream-fraction", 0.5, "share of streamed requests")
	maxTokens := fs.Int("max-tokens", 48, "tokens each request asks for")
	timeScale := fs.Float64("time-scale", 0.25, "the simulator's --time-scale (below 1: slower than real time)")
	deadline := fs.Duration("deadline", 60*time.Second, "client deadline: a request not ended by then is a hang")
	only := fs.String("faults", "", "comma-separated subset of faults to run, by index 1-6 (default all)")
	keep := fs.Bool("keep", false, "keep the work directory (logs of every process)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	faults, err := pick(allFaults(), *only)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "kvasir-chaos-")
	if err != nil {
		return err
	}
	defer func() {
		if *keep || err != nil {
			fmt.Fprintln(os.Stderr, "logs in", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05.000 ")+format+"\n", a...)
	}
	opts := Options{Bin: *bin, Dir: dir, Replicas: 3, Activators: 3, TimeScale: *timeScale,
		Load:   loadConfig{Concurrency: *conc, StreamFraction: *streamFrac, MaxTokens: *maxTokens, Deadline: *deadline},
		Before: *before, After: *after, MinBefore: *conc, MinAfter: *conc, Timeout: 2 * time.Minute, Logf: logf}
	h, err := newHarness(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := h.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	var results []*phaseResult
	failed := 0
	for _, f := range faults {
		res, err := h.phase(ctx, f)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		results = append(results, res)
		if len(res.violations()) > 0 {
			failed++
		}
	}
	fmt.Printf("kvasir local --activators 3, 3 simulated replicas (--time-scale=%g), %d clients, %.0f%% streamed, "+
		"max_tokens %d, client deadline %s; per fault %s of load before it and %s after the recovery\n\n",
		*timeScale, *conc, 100**streamFrac, *maxTokens, *deadline, *before, *after)
	writeTable(os.Stdout, results)
	if failed > 0 {
		return fmt.Errorf("%d of %d faults missed their goal", failed, len(results))
	}
	return nil
}

// pick returns the faults named by 1-based indices ("" = all).
func pick(all []fault, only string) ([]fault, error) {
	if only == "" {
		return all, nil
	}
	var out []fault
	for _, s := range strings.Split(only, ",") {
		var i int
		if _, err := fmt.Sscanf(strings.TrimSpace(s), "%d", &i); err != nil || i < 1 || i > len(all) {
			return nil, fmt.Errorf("--faults: %q is not an index in 1..%d", s, len(all))
		}
		out = append(out, all[i-1])
	}
	return out, nil
}
