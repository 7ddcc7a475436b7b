package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/queueproxy"
)

// UsageError is a bad command line (exit code 2).
type UsageError struct{ msg string }

func (e UsageError) Error() string { return e.msg }

// ExitCode maps an error to a process exit code.
func ExitCode(err error) int {
	var u UsageError
	if errors.As(err, &u) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	var crash *sim.ExitError
	if errors.As(err, &crash) {
		return crash.Code
	}
	return 1
}

const usage = `Usage: kvasir <command> [flags]

Commands:
  local        run the platform on this machine: kvasir local -f FILE [--addr 127.0.0.1:8080]
  sim          run the vLLM-compatible engine simulator
  queue-proxy  run the queue-proxy sidecar in front of one engine
  bench run    drive load at an OpenAI-compatible server and report throughput and latency
  bench compare
               run one workload against a fresh local fleet per routing strategy, side by side

Run 'kvasir <command> -h' for the flags of a command.
`

// Main runs the CLI with args (without the program name).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return UsageError{"no command given"}
	}
	switch args[0] {
	case "local":
		return runLocal(ctx, args[1:], stderr)
	case "sim":
		return sim.Main(ctx, args[1:], stderr)
	case "queue-proxy":
		return queueproxy.Main(ctx, args[1:], stderr)
	case "bench":
		return runBench(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return UsageError{fmt.Sprintf("unknown command %q", args[0])}
}

func runLocal(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("kvasir local", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts := local.Options{Activator: activator.DefaultConfig()}
	fs.StringVar(&opts.File, "f", "", "file with ModelService documents (required)")
	fs.StringVar(&opts.Addr, "addr", "127.0.0.1:8080", "address of the OpenAI API and /healthz")
	fs.StringVar(&opts.AdminAddr, "admin-addr", "127.0.0.1:9090",
		"address of the operator endpoints: /metrics, /kvasir/replicas, /healthz, /debug/pprof/ (off when empty)")
	fs.StringVar(&opts.LogDir, "log-dir", "", "directory for replica logs (default: a new temporary directory)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	parsed := bindLocalFlags(fs, &opts)
	if err := fs.Parse(args); err != nil {
		return UsageError{err.Error()}
	}
	if err := parsed(); err != nil {
		return err
	}
	if opts.File == "" {
		fs.Usage()
		return UsageError{"-f: a file with ModelService documents is required"}
	}
	if fs.NArg() > 0 {
		return UsageError{"unexpected arguments: " + strings.Join(fs.Args(), " ")}
	}
	logger, err := NewLogger(stderr, *level)
	if err != nil {
		return err
	}
	opts.Logger = logger
	return local.Run(ctx, opts)
}

// bindLocalFlags binds the flags of `kvasir local` that configure the
// platform (all but -f, --addr, --admin-addr, --log-dir and --log-level) to
// opts, and returns what runs once they are parsed: the checks of their
// values and the copies into opts. `kvasir bench compare` binds a
// strategy's args with it, so that they mean exactly what they mean on the
// command line.
func bindLocalFlags(fs *flag.FlagSet, opts *local.Options) (parsed func() error) {
	fs.DurationVar(&opts.ScaleInterval, "scale-interval", 0, "scaler decision period (default 1s)")
	fs.StringVar(&opts.Accelerators, "accelerators", "", "this machine's accelerators, e.g. nvidia.com/gpu=4,huawei.com/ascend-910b=8 (empty: not counted)")
	fs.DurationVar(&opts.DrainTimeout, "drain-timeout", 30*time.Second, "on Ctrl-C or SIGTERM, how long in-flight requests and streams may take to finish")
	fs.IntVar(&opts.Activators, "activators", 1, "activator replicas, each with its own scheduling state; requests are spread over them")
	fs.BoolVar(&opts.RequireAuth, "require-auth", false,
		"refuse to start, or to apply a change of the file, without a Tenant document (an API open to anyone who can reach it)")
	RegisterActivatorFlags(fs, &opts.Activator)
	opts.Limits = httpserver.DefaultLimits()
	httpserver.RegisterFlags(fs, &opts.Limits)
	rl := &RateLimitFlags{}
	rl.Register(fs)
	return func() error {
		if err := opts.Limits.Validate(); err != nil {
			return UsageError{err.Error()}
		}
		if err := rl.Validate(); err != nil {
			return err
		}
		opts.RateLimitRedis, opts.RateLimitFail = rl.Redis, rl.Mode
		return nil
	}
}

// RegisterActivatorFlags binds the activator's configuration to flags.
func RegisterActivatorFlags(fs *flag.FlagSet, c *activator.Config) {
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", c.MaxBodyBytes, "largest accepted request body (413 above)")
	fs.IntVar(&c.MaxBuffered, "max-buffered", c.MaxBuffered, "requests buffered per revision while no replica is ready (503 above)")
	fs.DurationVar(&c.BufferTimeout, "buffer-timeout", c.BufferTimeout, "how long a request waits for a ready replica (then 503)")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", c.RequestTimeout, "bound of one forwarded request when the revision sets none")
	fs.IntVar(&c.MaxAttempts, "max-attempts", c.MaxAttempts, "replicas a request may try before its first byte")
	fs.Var((*listFlag)(&c.AllowedOrigins), "allowed-origins",
		"comma-separated browser origins, besides the API's own, whose pages may open a WebSocket, e.g. https://app.example.com; "+
			`"*" lets any web page drive the API (explicit opt-in)`)
	fs.IntVar(&c.OutlierConsecutiveFailures, "outlier-consecutive-failures", c.OutlierConsecutiveFailures,
		"failures in a row (connection errors, 502/503/504, broken answers) that eject a replica from picking (0: never)")
	fs.DurationVar(&c.OutlierBaseEjection, "outlier-base-ejection", c.OutlierBaseEjection,
		"how long a replica's first ejection lasts; later ones last this times the replica's ejection count")
	fs.DurationVar(&c.OutlierMaxEjection, "outlier-max-ejection", c.OutlierMaxEjection, "the longest one ejection lasts")
	fs.IntVar(&c.OutlierMaxEjectionPercent, "outlier-max-ejection-percent", c.OutlierMaxEjectionPercent,
		"most of a revision's replicas ejected at once, in percent (one may always be)")
	RegisterQueueFlags(fs, c)
}

// RateLimitFlags are the rate limiter's flags, the same on `kvasir
// activator` and `kvasir local`.
type RateLimitFlags struct {
	// Redis is --ratelimit-redis: host:port of the Redis holding the
	// counters; empty: in memory.
	Redis string
	// Fail is --ratelimit-fail as given; Mode is it parsed by Validate.
	Fail string
	Mode ratelimit.FailMode
}

// Register binds the flags to fs.
func (f *RateLimitFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Redis, "ratelimit-redis", "",
		"host:port of the Redis that holds the tenants' rate limit counters, shared by every activator using it "+
			"(empty: in this process's memory)")
	fs.StringVar(&f.Fail, "ratelimit-fail", string(ratelimit.FailOpen),
		"when the rate limiter's Redis fails or does not answer within 100ms: open (serve the request unmetered) "+
			"or closed (answer 503 with Retry-After 1)")
}

// Validate checks the flags, naming the bad one, and sets Mode.
func (f *RateLimitFlags) Validate() error {
	mode, err := ratelimit.ParseFailMode(f.Fail)
	if err != nil {
		return UsageError{fmt.Sprintf("--ratelimit-fail: %q: want open or closed", f.Fail)}
	}
	if f.Redis != "" {
		if _, port, err := net.SplitHostPort(f.Redis); err != nil || port == "" {
			return UsageError{fmt.Sprintf("--ratelimit-redis: %q: want host:port", f.Redis)}
		}
	}
	f.Mode = mode
	return nil
}

// listFlag is a comma-separated list flag; each use replaces the list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = nil
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// NewLogger returns a text logger at the named level.
func NewLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, UsageError{fmt.Sprintf("--log-level: %v", err)}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
