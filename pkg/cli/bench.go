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
	if len(r.Tenants) > 0 {
		fmt.Fprintf(stderr, "kvasir bench: %d tenants (+%d warm-up each) to %s: %s\n",
			len(r.Tenants), r.Warmup, r.Target, describeTenants(r))
	} else {
		shape, limit := loadShape(r)
		fmt.Fprintf(stderr, "kvasir bench: %d %s requests (+%d warm-up) to %s, model %s, %s, max concurrency %s\n",
			r.NumPrompts, r.Workload, r.Warmup, r.Target, r.Model, shape, limit)
	}

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

// describeTenants summarises each tenant of a valid config: its requests,
// model, load shape and concurrency limit.
func describeTenants(cfg bench.Config) string {
	parts := make([]string, 0, len(cfg.Tenants))
	for i, t := range cfg.Tenants {
		tc, err := cfg.TenantConfig(i)
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s: %v", t.Name, err))
			continue
		}
		tc = tc.Resolved()
		shape, limit := loadShape(tc)
		parts = append(parts, fmt.Sprintf("%s: %d %s requests, model %s, %s, max concurrency %s",
			t.Name, tc.NumPrompts, tc.Workload, tc.Model, shape, limit))
	}
	return strings.Join(parts, "; ")
}

// loadShape describes a resolved workload's arrivals ("closed loop" or the
// open loop's rate and process) and its concurrency limit.
func loadShape(r bench.Config) (shape, limit string) {
	shape = "closed loop"
	if r.Rate > 0 {
		shape = fmt.Sprintf("%g req/s (%s)", r.Rate, r.Arrival)
	}
	limit = "unlimited"
	if r.MaxConcurrency > 0 {
		limit = fmt.Sprint(r.MaxConcurrency)
	}
	return shape, limit
}

func runBenchCompare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parseCompareFlags(args, stderr)
	if err != nil {
		return err
	}
	cmp, err := bench.LoadComparison(f.file)
	if err != nil {
		return err
	}
	strategies, err := cmp.Select(f.only)
	if err != nil {
		return UsageError{err.Error()}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating own binary: %w", err)
	}
	logger, err := NewLogger(stderr, f.logLevel())
	if err != nil {
		return err
	}
	dir, tempDir, err := compareDir(f.logDir)
	if err != nil {
		return err
	}

	r := cmp.Config.Resolved()
	shape, limit := loadShape(r)
	each := fmt.Sprintf("%d %s requests (+%d warm-up), model %s, %s, max concurrency %s", r.NumPrompts, r.Workload, r.Warmup, r.Model, shape, limit)
	if len(r.Tenants) > 0 {
		each = fmt.Sprintf("%d tenants (+%d warm-up each): %s", len(r.Tenants), r.Warmup, describeTenants(r))
	}
	fmt.Fprintf(stderr, "kvasir bench compare: %s, %d strateg%s; each: %s; fleets and logs in %s\n",
		cmp.Name, len(strategies), plural(len(strategies), "y", "ies"), each, dir)

	rep, runErr := bench.Compare(ctx, cmp, strategies, bench.CompareOptions{
		Launch:   bench.LocalLauncher([]string{self}, cmp.Activators, logger).WithFlags(bindLocalFlags),
		Dir:      dir,
		Progress: stderr,
	})
	return reportComparison(rep, runErr, f.jsonPath, dir, tempDir, stdout, stderr)
}

// compareFlags are the command line of `kvasir bench compare`.
type compareFlags struct {
	file, jsonPath, logDir string
	only                   nameList
	verbose                bool
}

// parseCompareFlags parses and checks the command line of `kvasir bench
// compare`.
func parseCompareFlags(args []string, stderr io.Writer) (*compareFlags, error) {
	fs := flag.NewFlagSet("kvasir bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &compareFlags{}
	fs.StringVar(&f.file, "f", "", "file with the fleet (ModelService documents) and one Benchmark document (required)")
	fs.StringVar(&f.jsonPath, "json", "", "also write the results as one JSON object to this file")
	fs.Var(&f.only, "only", "run only this strategy; repeatable, or a comma-separated list (default: all, in file order)")
	fs.StringVar(&f.logDir, "log-dir", "", "directory for each strategy's fleet file and replica logs (default: a temporary directory, removed unless a strategy failed)")
	fs.BoolVar(&f.verbose, "v", false, "show the platform's logs (default: errors only)")
	if err := fs.Parse(args); err != nil {
		return nil, UsageError{err.Error()}
	}
	if f.file == "" {
		fs.Usage()
		return nil, UsageError{"-f: a file with ModelService documents and a Benchmark document is required"}
	}
	if fs.NArg() > 0 {
		return nil, UsageError{"unexpected arguments: " + strings.Join(fs.Args(), " ")}
	}
	if f.jsonPath != "" {
		// Fail now rather than after every strategy has run.
		if st, err := os.Stat(filepath.Dir(f.jsonPath)); err != nil || !st.IsDir() {
			return nil, UsageError{fmt.Sprintf("--json: %s: no such directory", filepath.Dir(f.jsonPath))}
		}
	}
	return f, nil
}

// logLevel is the platform's log level: errors only unless -v.
func (f *compareFlags) logLevel() string {
	if f.verbose {
		return "info"
	}
	return "error"
}

// compareDir is --log-dir, or a new temporary directory (temp) when it is
// empty.
func compareDir(logDir string) (dir string, temp bool, err error) {
	if logDir != "" {
		return logDir, false, nil
	}
	if dir, err = os.MkdirTemp("", "kvasir-compare-"); err != nil {
		return "", false, fmt.Errorf("log dir: %w", err)
	}
	return dir, true, nil
}

// reportComparison prints the comparison's table, writes its JSON, and
// fails when the run or a strategy did; a temporary directory is removed
// only when all went well.
func reportComparison(rep *bench.Report, runErr error, jsonPath, dir string, tempDir bool, stdout, stderr io.Writer) error {
	if rep == nil {
		return runErr
	}
	rep.WriteTable(stdout)
	if err := writeJSONFile(jsonPath, rep.WriteJSON); err != nil {
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
