package activator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// inflight is a response being forwarded and the endpoint it holds until
// close (called once, when the response is done).
type inflight struct {
	resp *http.Response
	rev  *revision
	ep   *scheduler.Pod
}

func (u *inflight) close() {
	u.resp.Body.Close()
	u.rev.release(u.ep)
}

func isRetryableStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable
}

// dispatch sends the request to a replica, buffering while none is ready and
// retrying on another replica while nothing has been received.
func (a *Activator) dispatch(ctx context.Context, rt routed, path string, hdr http.Header) (*inflight, *failure) {
	rev := rt.rev.rev
	timeout := rt.rev.cfg.Timeout
	if timeout <= 0 {
		timeout = a.cfg.RequestTimeout
	}
	var tried map[string]bool
	var lastErr error
	for attempt := 0; attempt < a.cfg.MaxAttempts; attempt++ {
		ep, err := rev.acquire(ctx, rt.req, tried, a.cfg.MaxBuffered, a.cfg.BufferTimeout)
		if err != nil {
			return nil, a.acquireFailure(ctx, err)
		}
		body := rt.body
		if rt.rev.prefill != nil {
			body = a.prefillFor(ctx, rt, ep, path, hdr, timeout)
		}
		resp, err := a.upstream.PostJSON(ctx, ep.Address, path, hdr, body, timeout)
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() && ctx.Err() == nil {
			// The replica had the request for the whole timeout: it did the
			// work, so another replica must not do it again.
			rev.release(ep)
			return nil, &failure{status: http.StatusGatewayTimeout, err: openai.Err(openai.TypeTimeout, "upstream_timeout",
				"the model replica did not answer within the request timeout ("+timeout.String()+")")}
		}
		retryable := err != nil || (isRetryableStatus(resp.StatusCode) && attempt+1 < a.cfg.MaxAttempts)
		if !retryable {
			return &inflight{resp: resp, rev: rev, ep: ep}, nil
		}
		if err == nil {
			lastErr = errors.New(resp.Status)
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		} else {
			lastErr = err
		}
		rev.release(ep)
		if ctx.Err() != nil {
			return nil, &failure{status: 499, err: openai.Err(openai.TypeInvalidRequest, "client_closed", "client closed the request")}
		}
		a.log.Warn("replica failed before the first byte; retrying", slog.String("revision", rev.key.Revision),
			slog.String("replica", ep.Name), slog.Int("attempt", attempt+1), slog.Any("error", lastErr))
		a.metrics.attempts.WithLabelValues(rt.svc.cfg.Name, rt.rev.cfg.Name).Inc()
		if tried == nil {
			tried = map[string]bool{}
		}
		tried[ep.Name] = true
	}
	return nil, &failure{status: http.StatusBadGateway, err: openai.Err(openai.TypeServer, "upstream_unavailable",
		"no replica could take the request: "+errString(lastErr))}
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

func (a *Activator) acquireFailure(ctx context.Context, err error) *failure {
	switch {
	case errors.Is(err, ErrBufferFull):
		return &failure{status: http.StatusServiceUnavailable, err: openai.Err(openai.TypeUnavailable, "queue_full", err.Error()), retryAfter: time.Second}
	case errors.Is(err, ErrBufferTimeout):
		return &failure{status: http.StatusServiceUnavailable, err: openai.Err(openai.TypeUnavailable, "buffer_timeout",
			"the model is scaling up and no replica became ready in time"), retryAfter: 5 * time.Second}
	case ctx.Err() != nil:
		return &failure{status: 499, err: openai.Err(openai.TypeInvalidRequest, "client_closed", "client closed the request")}
	}
	return &failure{status: http.StatusInternalServerError, err: openai.Err(openai.TypeServer, "internal_error", err.Error())}
}

func isEventStream(h http.Header) bool {
	return strings.HasPrefix(h.Get("Content-Type"), "text/event-stream")
}

// forwardHTTP answers an HTTP request; it returns the status code sent.
func (a *Activator) forwardHTTP(w http.ResponseWriter, r *http.Request, rt routed) int {
	up, f := a.dispatch(r.Context(), rt, r.URL.Path, r.Header)
	if f != nil {
		if f.status != 499 {
			openai.WriteError(w, f.status, f.err, f.retryAfter)
		}
		return f.status
	}
	defer up.close()
	resp := up.resp
	upstream.CopyEndToEnd(w.Header(), resp.Header)
	w.Header().Set(RevisionHeader, rt.rev.cfg.Name)
	if resp.ContentLength >= 0 && !isEventStream(resp.Header) {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if isEventStream(resp.Header) {
		a.copyStream(w, r, resp.Body, *bp, rt)
		return resp.StatusCode
	}
	if _, err := io.CopyBuffer(w, resp.Body, *bp); err != nil && r.Context().Err() == nil {
		// Status and part of the body are out: abort the connection so the
		// client sees a broken response, never a truncated success.
		a.log.Warn("replica failed mid-response", slog.String("revision", rt.rev.cfg.Name), slog.Any("error", err))
		panic(http.ErrAbortHandler)
	}
	return resp.StatusCode
}

// copyStream forwards SSE events as they arrive, whole events only, flushing
// each read. If the upstream breaks mid-stream the client gets one error
// event instead of a torn one.
func (a *Activator) copyStream(w http.ResponseWriter, r *http.Request, body io.Reader, buf []byte, rt routed) {
	rc := http.NewResponseController(w)
	pending := 0
	for {
		n, err := body.Read(buf[pending:])
		pending += n
		if cut := completeEvents(buf[:pending]); cut > 0 {
			if _, werr := w.Write(buf[:cut]); werr != nil {
				return // client gone; deferred close cancels upstream
			}
			_ = rc.Flush()
			pending = copy(buf, buf[cut:pending])
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			if r.Context().Err() != nil {
				return
			}
			a.log.Warn("replica failed mid-stream", slog.String("revision", rt.rev.cfg.Name), slog.Any("error", err))
			_, _ = w.Write(openai.ErrorEvent(openai.Err(openai.TypeServer, "upstream_failed",
				"the model replica failed while streaming: "+err.Error())))
			_ = rc.Flush()
			return
		}
		if pending == len(buf) { // one event larger than the buffer: pass it on as is
			if _, werr := w.Write(buf); werr != nil {
				return
			}
			pending = 0
		}
	}
}

// completeEvents returns the length of the prefix of b made of whole SSE events.
func completeEvents(b []byte) int {
	i := bytes.LastIndex(b, []byte("\n\n"))
	if j := bytes.LastIndex(b, []byte("\n\r\n")); j > i {
		return j + 3
	}
	if i < 0 {
		return 0
	}
	return i + 2
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
