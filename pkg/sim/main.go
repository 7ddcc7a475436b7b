package sim

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// CrashExitCode is the exit status of a simulated engine crash.
const CrashExitCode = 3

// ExitError is returned by Main when the process should exit with Code:
// a simulated crash (--exit-after-tokens, CrashExitCode) or a broken
// serving group (GroupExitCode). Commands pass Code to os.Exit.
type ExitError struct {
	Code int
	// Reason says why ("" for a simulated crash).
	Reason string
}

func (e *ExitError) Error() string {
	if e.Reason != "" {
		return "engine-sim: " + e.Reason + ", exit status " + strconv.Itoa(e.Code)
	}
	return "simulated engine crash (--exit-after-tokens), exit status " + strconv.Itoa(e.Code)
}

// Main runs the simulator as a command: it parses args (flags, without the
// program name), listens on --host:--port and serves until ctx is done,
// then shuts down gracefully within --shutdown-timeout. Logs go to stderr.
// A simulated crash closes every connection at once and returns *ExitError.
//
// In a serving group (--group-size above 1) the leader (--rank 0) also
// listens on --leader-address for its workers and is ready only once they
// have all joined; when one of them leaves, it closes every connection and
// returns an *ExitError with GroupExitCode. A worker serves no API: it
// joins its leader and returns when ctx is done (nil), or when the leader
// goes away (GroupExitCode).
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("engine-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := DefaultConfig()
	cfg.RegisterFlags(fs)
	if err := fs.Parse(normalizeArgs(args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("engine-sim flags: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("engine-sim: unexpected argument %q", fs.Arg(0))
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("engine-sim config: %w", err)
	}

	log := slog.New(slog.NewTextHandler(stderr, nil))
	if cfg.Group.worker() {
		return runWorker(ctx, cfg, log)
	}
	var group *groupLeader
	var groupFailed <-chan struct{} // nil without a group: never ready
	if cfg.Group.grouped() {
		var err error
		if group, err = listenGroup(cfg, log, handshakeTimeout); err != nil {
			return err
		}
		defer group.close()
		groupFailed = group.Failed()
	}
	crashed := make(chan struct{})
	srv, err := New(cfg, WithLogger(log), WithExitHook(func() { close(crashed) }), withGroup(group))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		if srv.kvPub != nil { // Run, which would close it, never runs
			_ = srv.kvPub.Close()
		}
		return fmt.Errorf("engine-sim listen: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	runCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	engineDone := make(chan struct{})
	go func() {
		defer close(engineDone)
		_ = srv.Run(runCtx) // only errors when called twice
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("engine simulator listening", "addr", ln.Addr().String(), "model", cfg.Model)

	select {
	case err := <-serveErr:
		stopEngine()
		<-engineDone
		return fmt.Errorf("engine-sim serve: %w", err)
	case <-crashed:
		_ = hs.Close()
		stopEngine()
		<-engineDone
		return &ExitError{Code: CrashExitCode}
	case <-groupFailed:
		_ = hs.Close()
		stopEngine()
		<-engineDone
		return &ExitError{Code: GroupExitCode, Reason: "the serving group failed: " + group.failure()}
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	// In-flight requests finish while the engine still runs; then it stops.
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err = hs.Shutdown(shutdownCtx)
	if err != nil {
		_ = hs.Close()
		err = fmt.Errorf("engine-sim shutdown: %w", err)
	}
	stopEngine()
	<-engineDone
	return err
}

// normalizeArgs accepts vLLM's spellings: --flag_name for --flag-name, and
// --lora-modules followed by several name=path values.
func normalizeArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if strings.HasPrefix(a, "-") {
			name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			dashes := a[:len(a)-len(strings.TrimLeft(a, "-"))]
			a = dashes + strings.ReplaceAll(name, "_", "-")
			if hasValue {
				a += "=" + value
			}
			if strings.ReplaceAll(name, "_", "-") == "lora-modules" && !hasValue &&
				i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
					i++
					out = append(out, a+"="+args[i])
				}
				continue
			}
		}
		out = append(out, a)
	}
	return out
}
