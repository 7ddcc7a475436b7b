package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
)

// servers are a component's public server (fasthttp) and admin HTTP
// server (net/http).
type servers struct {
	public *httpserver.FastServer
	admin  *http.Server
}

// boundAddrs are the addresses the servers listen on ("" for an admin
// listener that is off).
type boundAddrs struct{ public, admin string }

// serve starts the public server on publicAddr, hardened by limits, and the
// admin server on adminAddr (none when empty). The channel receives the
// public server's error when it stops serving.
func serve(publicAddr string, public fasthttp.RequestHandler, adminAddr string, admin http.Handler, limits httpserver.Limits,
	log *slog.Logger) (servers, <-chan error, boundAddrs, error) {
	var s servers
	var addrs boundAddrs
	ln, err := net.Listen("tcp", publicAddr)
	if err != nil {
		return s, nil, addrs, fmt.Errorf("listen %s: %w", publicAddr, err)
	}
	// The admin server is reached by operators and scrapers, not clients:
	// it has the same timeouts but needs no connection cap of its own.
	s.admin = httpserver.New(admin, limits, log)
	if adminAddr != "" {
		aln, err := net.Listen("tcp", adminAddr)
		if err != nil {
			ln.Close()
			return s, nil, addrs, fmt.Errorf("listen --admin-addr %s: %w", adminAddr, err)
		}
		addrs.admin = aln.Addr().String()
		go func() { _ = httpserver.ServeAdmin(s.admin, aln) }()
	}
	s.public = httpserver.NewFast(public, limits, log)
	addrs.public = ln.Addr().String()
	errCh := make(chan error, 1)
	go func() { errCh <- s.public.Serve(ln) }() // capped at limits.MaxConnections
	return s, errCh, addrs, nil
}

// drainingHealthz answers 200 until draining is set, then 503: load
// balancers take the endpoint out while it still serves.
func drainingHealthz(draining *atomic.Bool) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("text/plain")
		if draining.Load() {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString("draining\n")
			return
		}
		ctx.SetBodyString("ok\n")
	}
}

// drain stops a public server gracefully, as Knative's activator does: the
// readiness probe fails at once while requests are still served for the
// quiet period (closing the listener at once would refuse, or reset in the
// accept queue, the connections load balancers still send until they see
// the endpoint go); then the listener closes and in-flight requests and
// streams get up to timeout to finish. Past it the rest are cut, and
// drain says so.
func drain(srv *httpserver.FastServer, errCh <-chan error, draining *atomic.Bool, quiet, timeout time.Duration, log *slog.Logger) error {
	draining.Store(true)
	log.Info("draining: /healthz fails, requests still served for the quiet period", slog.Duration("quietPeriod", quiet))
	quietOver := time.NewTimer(quiet)
	select {
	case err := <-errCh:
		quietOver.Stop()
		return err
	case <-quietOver.C:
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("drain timed out: cutting the requests still in flight", slog.Duration("drainTimeout", timeout))
		_ = srv.Close()
		return nil
	}
	return err
}
