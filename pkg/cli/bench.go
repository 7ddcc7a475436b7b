package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/bench"
)

const benchUsage = `Usage: kvasir bench <command> [flags]

Commands:
  run   drive load at an OpenAI-compatible server and report throughput and latency:
        kvasir bench run --target URL --model NAME [flags]

Run 'kvasir bench run -h' for its flags.
`

// runBench dispatches `kvasir bench` subcommands.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, benchUsage)
		return UsageError{"bench: no command given"}
	}
	switch args[0] {
	case "run":
		return runBenchRun(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, benchUsage)
		return nil
	}
	fmt.Fprint(stderr, benchUsage)
	return UsageError{fmt.Sprintf("bench: unknown command %q", args[0])}
}

func runBenchRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kvasir bench run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg bench.Config
	cfg.RegisterFlags(fs)
	jsonPath := fs.String("json", "", "also write the result as one JSON object to this file")
	if err := fs.Parse(args); err != nil {
		return UsageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return UsageError{"unexpected arguments: " + strings.Join(fs.Args(), " ")}
	}
	if err := cfg.Validate(); err != nil {
		return UsageError{err.Error()}
	}
	r := cfg.Resolved()
	shape := "closed loop"
	if r.Rate > 0 {
		shape = fmt.Sprintf("%g req/s (%s)", r.Rate, r.Arrival)
	}
	limit := "unlimited"
	if r.MaxConcurrency > 0 {
		limit = fmt.Sprint(r.MaxConcurrency)
	}
	fmt.Fprintf(stderr, "kvasir bench: %d %s requests (+%d warm-up) to %s, model %s, %s, max concurrency %s\n",
		r.NumPrompts, r.Workload, r.Warmup, r.Target, r.Model, shape, limit)

	res, runErr := bench.Run(ctx, cfg)
	if res == nil {
		return runErr
	}
	res.WriteTable(stdout)
	if *jsonPath != "" {
		var buf bytes.Buffer
		if err := res.WriteJSON(&buf); err != nil {
			return err
		}
		if err := os.WriteFile(*jsonPath, buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	return runErr
}
