package health

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"
)

// Prober asks whether the engine is healthy.
type Prober interface {
	// Probe asks once; it reports true when the engine is ready.
	Probe(ctx context.Context) bool
}

// Warmer prepares what must be known before readiness is reported, e.g. the
// engine's metrics. It is called each time the engine turns ready.
type Warmer interface {
	Warm(ctx context.Context)
}

// HTTPProber probes an engine's health endpoint: ready means 200.
type HTTPProber struct {
	// Transport carries the probe.
	Transport http.RoundTripper
	// URL is the engine's health endpoint.
	URL string
	// Timeout bounds one probe.
	Timeout time.Duration
	// Log gets failed probes at debug level; nil discards.
	Log *slog.Logger
}

var _ Prober = (*HTTPProber)(nil)

// Probe asks the engine's health endpoint once.
func (h *HTTPProber) Probe(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return false
	}
	resp, err := h.Transport.RoundTrip(req)
	if err != nil {
		if h.Log != nil {
			h.Log.Debug("engine health probe failed", slog.Any("error", err))
		}
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep the connection reusable
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
