package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/bench"
)

const benchUsage = `Usage: kvasir bench <command> [flags]

Commands:
  run       drive load at an OpenAI-compatible server and report throughput and latency:
            kvasir bench run --target URL --model NAME [flags]
  compare   run one workload on a fresh local fleet per routing strategy and print them side by side:
            kvasir bench compare -f FILE [--json OUT] [--only NAME]

Run 'kvasir bench run -h' or 'kvasir bench compare -h' for their flags.
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
	case "compare":
		return runBenchCompare(ctx, args[1:], stdout, stderr)
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
	if err := writeJSONFile(*jsonPath, res.WriteJSON); err != nil {
		return err
	}
	return runErr
}

// nameList is a repeatable flag that also takes comma-separated values.
type nameList []string

func (l *nameList) String() string { return strings.Join(*l, ",") }

func (l *nameList) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v == "" {
			return errors.New("empty name")
		}
		*l = append(*l, v)
	}
	return nil
}

func runBenchCompare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kvasir bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "file with the fleet (ModelService documents) and one Benchmark document (required)")
	jsonPath := fs.String("json", "", "also write the results as one JSON object to this file")
	var only nameList
	fs.Var(&only, "only", "run only this strategy; repeatable, or a comma-separated list (default: all, in file order)")
	logDir := fs.String("log-dir", "", "directory for each strategy's fleet file and replica logs (default: a temporary directory, removed unless a strategy failed)")
	verbose := fs.Bool("v", false, "show the platform's logs (default: errors only)")
	if err := fs.Parse(args); err != nil {
		return UsageError{err.Error()}
	}
	if *file == "" {
		fs.Usage()
		return UsageError{"-f: a file with ModelService documents and a Benchmark document is required"}
	}
	if fs.NArg() > 0 {
		return UsageError{"unexpected arguments: " + strings.Join(fs.Args(), " ")}
	}
	if *jsonPath != "" {
		// Fail now rather than after every strategy has run.
		if st, err := os.Stat(filepath.Dir(*jsonPath)); err != nil || !st.IsDir() {
			return UsageError{fmt.Sprintf("--json: %s: no such directory", filepath.Dir(*jsonPath))}
		}
	}
	cmp, err := bench.LoadComparison(*file)
	if err != nil {
		return err
	}
	strategies, err := cmp.Select(only)
	if err != nil {
		return UsageError{err.Error()}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating own binary: %w", err)
	}
	level := "error"
	if *verbose {
		level = "info"
	}
	logger, err := NewLogger(stderr, level)
	if err != nil {
		return err
	}
	dir, tempDir := *logDir, false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "kvasir-compare-"); err != nil {
			return fmt.Errorf("log dir: %w", err)
		}
		tempDir = true
	}

	r := cmp.Config.Resolved()
	shape := "closed loop"
	if r.Rate > 0 {
		shape = fmt.Sprintf("%g req/s (%s)", r.Rate, r.Arrival)
	}
	limit := "unlimited"
	if r.MaxConcurrency > 0 {
		limit = fmt.Sprint(r.MaxConcurrency)
	}
	fmt.Fprintf(stderr, "kvasir bench compare: %s, %d strateg%s; each: %d %s requests (+%d warm-up), model %s, %s, max concurrency %s; fleets and logs in %s\n",
		cmp.Name, len(strategies), plural(len(strategies), "y", "ies"), r.NumPrompts, r.Workload, r.Warmup, r.Model, shape, limit, dir)

	rep, runErr := bench.Compare(ctx, cmp, strategies, bench.CompareOptions{
		Launch:   bench.LocalLauncher([]string{self}, cmp.Activators, logger),
		Dir:      dir,
		Progress: stderr,
	})
	if rep == nil {
		return runErr
	}
	rep.WriteTable(stdout)
	if err := writeJSONFile(*jsonPath, rep.WriteJSON); err != nil {
		return err
	}
	if runErr != nil {
		return runErr
	}
	if failed := rep.Failed(); len(failed) > 0 {
		return fmt.Errorf("bench compare: %d of %d strategies failed: %s (fleets and logs in %s)",
			len(failed), len(rep.Results), strings.Join(failed, ", "), dir)
	}
	if tempDir {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(stderr, "kvasir bench compare: removing %s: %v\n", dir, err)
		}
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// writeJSONFile writes what write produces to path (the --json flag); an
// empty path writes nothing.
func writeJSONFile(path string, write func(io.Writer) error) error {
	if path == "" {
		return nil
	}
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}
