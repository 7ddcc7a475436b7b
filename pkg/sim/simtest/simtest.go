// Package simtest runs the engine simulator in-process for other packages'
// tests: one place that starts it, waits for it to be ready and stops it
// with the test.
package simtest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/sim"
)

// Config returns the simulator's defaults with every physics cost zero, so
// tests run at the speed of the machine; mutate adjusts it.
func Config(mutate func(*sim.Config)) sim.Config {
	cfg := sim.DefaultConfig()
	cfg.ZeroLatency = true
	if mutate != nil {
		mutate(&cfg)
	}
	return cfg
}

// Handler starts a simulator and returns its HTTP handler; it stops when
// the test ends. Unless cfg has a startup delay, it is ready on return.
func Handler(t testing.TB, cfg sim.Config) http.Handler {
	t.Helper()
	h, stop := start(t, cfg)
	t.Cleanup(stop)
	return h
}

// Start serves a simulator over loopback HTTP until the test ends and
// returns its base URL.
func Start(t testing.TB, cfg sim.Config) string {
	t.Helper()
	h, stop := start(t, cfg)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		stop() // the engine fails what is left, so handlers return
		srv.Close()
	})
	return srv.URL
}

func start(t testing.TB, cfg sim.Config) (http.Handler, func()) {
	t.Helper()
	s, err := sim.New(cfg, sim.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("simulator config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	stop := func() { cancel(); <-done }
	if cfg.StartupDelay == 0 {
		deadline := time.Now().Add(10 * time.Second)
		for !s.Ready() { // a bounded readiness poll: Run sets it at once
			if time.Now().After(deadline) {
				stop()
				t.Fatal("simulator not ready after 10s")
			}
			time.Sleep(time.Millisecond)
		}
	}
	return s.Handler(), stop
}
