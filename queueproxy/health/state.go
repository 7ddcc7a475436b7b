package health

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// requestProbeTimeout bounds the engine probe made while answering a
// readiness request: a poller retries soon anyway, and a slow engine is
// still found ready by the background prober's longer timeout.
const requestProbeTimeout = 100 * time.Millisecond

// State is the readiness and drain state of one queue-proxy. Create it with
// New; it is safe for concurrent use.
type State struct {
	prober Prober
	warmer Warmer // nil: nothing to prepare
	log    *slog.Logger

	ready    atomic.Bool // the engine answered its health check
	draining atomic.Bool

	quietOver     chan struct{} // closed when a drain's quiet period is over
	quietOverOnce sync.Once

	active activity // proxied requests running, queued ones included
}

// New returns a State, not ready and not draining, that follows the engine
// through prober and calls warmer (which may be nil) before the engine is
// reported ready. A nil logger discards.
func New(prober Prober, warmer Warmer, log *slog.Logger) *State {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &State{prober: prober, warmer: warmer, log: log, quietOver: make(chan struct{})}
}

// Ready is the readiness reported to the outside: the engine is ready and
// the proxy is not draining.
func (s *State) Ready() bool { return s.ready.Load() && !s.draining.Load() }

// Draining reports whether a drain started.
func (s *State) Draining() bool { return s.draining.Load() }

// ProbeOnce is the background health probe; call it periodically.
func (s *State) ProbeOnce(ctx context.Context) {
	ok := s.prober.Probe(ctx)
	if ctx.Err() != nil {
		return // stopping: not the engine's fault
	}
	s.setReady(ctx, ok, "background")
}

// setReady records the engine's readiness. On becoming ready the warmer runs
// first, so that the proxy reports ready only once it knows what the warmer
// learns (the engine's KV block size and capacity: the KV model then sees
// the very first requests, which a cold start sends all at once).
func (s *State) setReady(ctx context.Context, ok bool, source string) {
	if ok && !s.ready.Load() && s.warmer != nil {
		s.warmer.Warm(ctx)
	}
	if s.ready.Swap(ok) != ok {
		s.log.Info("engine readiness changed", slog.Bool("ready", ok), slog.String("source", source))
	}
}

// MarkUnready records that the engine is not ready, e.g. when a request
// could not reach it; source names who found out, for the log.
func (s *State) MarkUnready(ctx context.Context, source string) { s.setReady(ctx, false, source) }

// ServeReady answers 200 when the engine is ready and the proxy is not
// draining, 503 otherwise. When the engine is not known to be ready it is
// probed right now, so that a poller sees readiness the moment the engine is
// up.
func (s *State) ServeReady(w http.ResponseWriter, r *http.Request) {
	if !s.draining.Load() && !s.ready.Load() {
		ctx, cancel := context.WithTimeout(r.Context(), requestProbeTimeout)
		s.setReady(ctx, s.prober.Probe(ctx), "request")
		cancel()
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case s.draining.Load():
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "draining\n")
	case s.ready.Load():
		_, _ = io.WriteString(w, "ready\n")
	default:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "engine not ready\n")
	}
}

// StartDrain marks the proxy draining, which fails readiness at once. It
// reports whether this call started the drain (false when one had started).
func (s *State) StartDrain() bool { return !s.draining.Swap(true) }

// WaitQuiet waits out a drain's quiet period (or until ctx ends), then lets
// wait-for-drain requests go on to wait for the last proxied request.
func (s *State) WaitQuiet(ctx context.Context, quiet time.Duration) {
	t := time.NewTimer(quiet)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	s.quietOverOnce.Do(func() { close(s.quietOver) })
}

// Enter counts a proxied request as running; pair it with Leave.
func (s *State) Enter() { s.active.enter() }

// Leave counts a proxied request as finished.
func (s *State) Leave() { s.active.leave() }

// WaitIdle returns when no proxied request runs, or ctx's error when it ends
// first.
func (s *State) WaitIdle(ctx context.Context) error { return s.active.wait(ctx) }

// ServeWaitForDrain answers once the proxy has drained: a drain started, its
// quiet period is over and no proxied request is left. It answers nothing
// when the request ends first.
func (s *State) ServeWaitForDrain(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.quietOver:
	case <-r.Context().Done():
		return
	}
	if err := s.active.wait(r.Context()); err != nil {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "drained\n")
}
