package queueproxy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/maxprocs"
)

// closeGrace bounds the wait for handlers to return once their connections
// were closed at the end of a drain that timed out.
const closeGrace = 5 * time.Second

// Main runs a queue-proxy as a process: it parses args as flags, listens on
// --host:--port and serves until ctx ends (SIGTERM or SIGINT), then drains:
// readiness fails and subscribers are told at once, requests are still served
// for --drain-quiet-period, then the listener closes and in-flight requests
// and streams get up to --drain-timeout to finish. It returns nil after a
// drain, and an error for bad flags or a failure to serve. Logs go to stderr.
// Until ctx ends it also fits the process's GOMAXPROCS to its CPU use
// (pkg/maxprocs); the drain runs on the runtime's default Ps.
func Main(ctx context.Context, args []string, stderr io.Writer) error {
	return run(ctx, args, stderr, nil, true)
}

// run is Main with a hook told the listening addresses (admin nil when
// --admin-addr is off), and with the fitting
// of GOMAXPROCS (pkg/maxprocs) optional: it is the process's, and tests run
// several queue-proxies in one process.
func run(ctx context.Context, args []string, stderr io.Writer, listening func(public, admin net.Addr), fitProcs bool) error {
	fs := flag.NewFlagSet("queue-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("queue-proxy: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("queue-proxy: unexpected arguments %q", fs.Args())
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("queue-proxy: %w", err)
	}
	logHandler := slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel})
	log := slog.New(logHandler).With(slog.String("component", "queue-proxy"), slog.String("pod", cfg.PodName))
	if fitProcs {
		defer maxprocs.Start(ctx, log.With(slog.String("part", "maxprocs")))()
	}

	p, err := New(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
	if err != nil {
		return fmt.Errorf("queue-proxy: listen: %w", err)
	}
	var adminAddr net.Addr
	if cfg.AdminAddr != "" {
		aln, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("queue-proxy: listen --admin-addr %s: %w", cfg.AdminAddr, err)
		}
		adminAddr = aln.Addr()
		admin := httpserver.New(httpserver.AdminMux(p.MetricsHandler()), cfg.Limits, log)
		go func() { _ = httpserver.ServeAdmin(admin, aln) }() // returns once closed
		defer admin.Close()
		log.Info("serving the admin endpoints", slog.String("addr", adminAddr.String()))
	}
	// Run outlives ctx: it must keep reporting through the drain.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		_ = p.Run(runCtx) // returns nil when stopped
	}()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	log.Info("serving", slog.String("addr", ln.Addr().String()), slog.String("engine", cfg.EngineURL),
		slog.Int("containerConcurrency", cfg.ContainerConcurrency))
	if listening != nil {
		listening(ln.Addr(), adminAddr)
	}

	select {
	case err := <-served:
		stopRun()
		<-runDone
		return fmt.Errorf("queue-proxy: serve: %w", err)
	case <-ctx.Done():
	}

	log.Info("shutting down", slog.Any("cause", context.Cause(ctx)))
	p.Drain(context.WithoutCancel(ctx))
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.drainTimeout())
	defer cancel()
	if err := p.Shutdown(shutdownCtx); err != nil {
		log.Warn("drain timed out; closing remaining connections", slog.Any("error", err),
			slog.Int("inFlight", p.Stat().InFlight))
		_ = p.Close() // the requests see their client gone, and cancel their engine requests
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeGrace)
		defer cancel()
		if err := p.health.WaitIdle(closeCtx); err != nil {
			log.Warn("requests still running after close", slog.Any("error", err))
		}
	}
	<-served // the listener closed
	stopRun()
	<-runDone
	log.Info("stopped")
	return nil
}
