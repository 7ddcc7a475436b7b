package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// inflight is a response being forwarded and the endpoint it holds until
// close (called once, when the response is done).
type inflight struct {
	a    *Activator
	resp *http.Response
	rev  *revision
	ep   *scheduler.Pod
	// broken: the replica's answer failed before its end; abandoned: the
	// client left before it. They decide what close tells outlier detection.
	broken, abandoned bool
	// tenant and model are whose answer it is (tenant nil: the API is
	// open), for the tenant metrics (tenant_metrics.go).
	tenant *tenant
	model  string
	// meter reads the usage of a successful answer to a tenant's request
	// when the queue-proxy's header does not give it (tenant_metrics.go);
	// nil otherwise.
	meter *usageMeter
	// eof: the replica's answer was read to its end, so a stream's trailer
	// (the queue-proxy's Kvasir-Usage) is in resp.Trailer.
	eof bool
	// est is what a tenant's request was estimated to cost (its prompt's
	// tokens and its output bound), the fallback of usage; zero for the
	// requests of an open API.
	est ratelimit.Cost
	// adm is the request's rate limit reservation, settled at close; nil
	// when the request is not limited (ratelimit.go).
	adm *admission
	// fair is what the request owes its revision's fair queue, settled at
	// close (fairness.go).
	fair fairCharge
	// exact and fallback cache usage (computed once, at close).
	usageDone bool
	usageVal  *openai.Usage
	exactVal  *openai.Usage
}

// usage is what the request used, for the rate limits and the fair queue:
// the exact usage the queue-proxy measured (its Kvasir-Usage header on a
// whole answer, its trailer on a stream read to its end), else the usage
// the engine reported in the answer (a whole answer's, or a stream's usage
// chunk), else, for a successful answer to a tenant, an estimate: the
// prompt's estimated tokens and, for a stream, one token per content event
// the replica sent (the streaming granularity of vLLM and the simulator),
// for a whole answer its output bound. nil when unknown: an answer that is
// not a success and reported nothing, or a request of an open API whose
// answer carried no usage. Call it once the answer has been read (close).
func (u *inflight) usage() *openai.Usage {
	u.computeUsage()
	return u.usageVal
}

// exactUsage is usage without the estimate: what the queue-proxy or the
// engine reported, nil otherwise. The tenant metrics count it.
func (u *inflight) exactUsage() *openai.Usage {
	u.computeUsage()
	return u.exactVal
}

func (u *inflight) computeUsage() {
	if u.usageDone {
		return
	}
	u.usageDone = true
	u.exactVal = u.reported()
	u.usageVal = u.exactVal
	if u.usageVal != nil || u.resp.StatusCode/100 != 2 || u.est == (ratelimit.Cost{}) {
		return
	}
	est := &openai.Usage{PromptTokens: uint64(u.est.InputTokens), CompletionTokens: uint64(u.est.OutputTokens)}
	if m := u.meter; m != nil && m.stream {
		est.CompletionTokens = uint64(m.events)
	}
	u.usageVal = est
}

// reported is the usage the queue-proxy measured (header or trailer), else
// the one the engine put in the answer (metered), else nil.
func (u *inflight) reported() *openai.Usage {
	if v, ok := usageHeader(u.resp.Header); ok {
		return v
	}
	if u.eof {
		if v, ok := usageHeader(u.resp.Trailer); ok {
			return v
		}
	}
	if u.meter != nil {
		return u.meter.usage()
	}
	return nil
}

func (u *inflight) close() {
	u.resp.Body.Close()
	u.countUsage()
	u.fair.settle(u)
	o := outcomeSuccess
	switch {
	case u.broken || isGatewayFailure(u.resp.StatusCode):
		o = outcomeFailure
	case u.abandoned:
		o = outcomeNone
	}
	u.a.release(u.rev, u.ep, o, u.fair.tk.tenant)
	// After the pod is free: with Redis this is a round trip, which must
	// not hold the pod from the requests waiting for it.
	u.adm.settleServed(u)
}

// release gives a pod back to its revision with the outcome of the request
// it served, and logs the ejection that outcome caused, if any.
func (a *Activator) release(rev *revision, ep *scheduler.Pod, o outcome, tenant string) {
	if ej := rev.release(ep, o, tenant); ej != nil {
		a.log.Warn("replica ejected after consecutive failures", slog.String("namespace", rev.key.Namespace),
			slog.String("revision", rev.key.Revision), slog.String("role", rev.key.RoleLabel()),
			slog.String("replica", ej.pod), slog.Duration("for", ej.dur))
	}
}

func isRetryableStatus(code int) bool {
	return code == http.StatusBadGateway || code == http.StatusServiceUnavailable
}

// maxReply bounds the error body of a failed replica kept to answer with.
const maxReply = 64 << 10

// reply is a replica's whole answer, kept in memory.
type reply struct {
	header http.Header
	body   []byte
}

// replyFailure reads a replica's failed answer (502 or 503) into a failure
// that passes it through: its status, end-to-end headers and body. A body
// that cannot be read whole becomes a 502 (over maxReply: an OpenAI error
// with the replica's status).
func replyFailure(resp *http.Response) *failure {
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReply+1))
	if err != nil {
		return unreachable(fmt.Errorf("reading the replica's %s answer: %w", resp.Status, err))
	}
	rp := &reply{header: http.Header{}, body: body}
	copyUpstreamHeaders(rp.header, resp.Header)
	if len(body) > maxReply {
		e := openai.Err(openai.TypeServer, "upstream_error", "the model replica answered "+resp.Status)
		rp.header = http.Header{"Content-Type": {"application/json"}}
		rp.body = e.JSON()
	}
	return &failure{status: resp.StatusCode, err: upstreamError(resp.StatusCode, rp.body), reply: rp}
}

// unreachable is the 502 for a replica that could not be reached or broke
// its answer.
func unreachable(err error) *failure {
	return &failure{status: http.StatusBadGateway, err: openai.Err(openai.TypeServer, "upstream_unavailable",
		"no replica could take the request: "+err.Error())}
}

// dispatch sends the request to a replica, buffering while none is ready and
// retrying on another replica while nothing has been received. When every
// ready replica has been tried (or the attempts are spent) it answers at
// once with the last replica's failure rather than buffer: replicas that
// are ready and failing are not "scaling up".
func (a *Activator) dispatch(ctx context.Context, rt routed, path string, hdr http.Header) (up *inflight, f *failure) {
	rev := rt.rev.rev
	timeout := rt.rev.cfg.Timeout
	if timeout <= 0 {
		timeout = a.cfg.RequestTimeout
	}
	model := rt.svc.cfg.Model
	if rt.req.Adapter != "" {
		model = rt.req.Adapter // the adapter's tokenizer and template, where it has its own
	}
	if rt.req.Tokens == nil { // admit may have tokenized it (a tokenizer file)
		a.tokenize(ctx, rt, model)
	}
	var tried map[string]bool
	var last *failure // the last replica's failure
	var fair fairCharge
	defer func() {
		if f != nil { // what the fair queue charged, settled as the rate limits are
			fair.settleFailed(f.spent)
		}
	}()
	for attempt := 0; attempt < a.cfg.MaxAttempts; attempt++ {
		ep, err := a.waitForPod(ctx, rt, tried, &fair)
		if err != nil {
			if errors.Is(err, errAllTried) && last != nil {
				return nil, last
			}
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
			a.release(rev, ep, outcomeFailure, fair.tk.tenant)
			return nil, &failure{status: http.StatusGatewayTimeout, err: openai.Err(openai.TypeTimeout, "upstream_timeout",
				"the model replica did not answer within the request timeout ("+timeout.String()+")"), spent: spentAll}
		}
		if err == nil && !isRetryableStatus(resp.StatusCode) {
			up = &inflight{a: a, resp: resp, rev: rev, ep: ep, adm: rt.adm, fair: fair}
			up.meterUsage(rt)
			return up, nil
		}
		if ctx.Err() != nil {
			if err == nil {
				resp.Body.Close()
			}
			a.release(rev, ep, outcomeNone, fair.tk.tenant)
			return nil, &failure{status: 499, err: openai.Err(openai.TypeInvalidRequest, "client_closed", "client closed the request"),
				spent: spentInput}
		}
		if err == nil {
			last = replyFailure(resp)
		} else {
			last = unreachable(err)
		}
		a.release(rev, ep, outcomeFailure, fair.tk.tenant)
		if attempt+1 == a.cfg.MaxAttempts {
			break
		}
		a.log.Warn("replica failed before the first byte; retrying", slog.String("revision", rev.key.Revision),
			slog.String("replica", ep.Name), slog.Int("attempt", attempt+1), slog.String("error", last.err.Message))
		a.metrics.attempts.WithLabelValues(rt.svc.cfg.Namespace, rt.svc.cfg.Name, rt.rev.cfg.Name).Inc()
		if tried == nil {
			tried = map[string]bool{}
		}
		tried[ep.Name] = true
	}
	return nil, last
}

func (a *Activator) acquireFailure(ctx context.Context, err error) *failure {
	switch {
	case errors.Is(err, ErrBufferFull):
		return &failure{status: http.StatusServiceUnavailable, err: openai.Err(openai.TypeUnavailable, "queue_full", err.Error()), retryAfter: time.Second}
	case errors.Is(err, errQueueRefused), errors.Is(err, errShed): // a tenant's (fairness.go)
		return &failure{status: http.StatusTooManyRequests, err: openai.Err(openai.TypeRateLimit, "queue_full", err.Error()), retryAfter: queueRetryAfter}
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
		rt.adm.settleFailed(f)
		switch {
		case f.reply != nil:
			writeReply(w, rt, f)
		case f.status != 499:
			rt.adm.writeHeaders(w.Header())
			openai.WriteError(w, f.status, f.err, f.retryAfter)
		}
		return f.status
	}
	defer up.close()
	resp := up.resp
	copyUpstreamHeaders(w.Header(), resp.Header)
	rt.adm.writeHeaders(w.Header())
	w.Header().Set(RevisionHeader, rt.rev.cfg.Name)
	if resp.ContentLength >= 0 && !isEventStream(resp.Header) {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	// A client that takes nothing of the response for the write timeout
	// (a stream it never reads) is cut off, which cancels the replica's work.
	cw := httpserver.NewClientWriter(w, a.writeTimeout)
	defer cw.Done()
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	if isEventStream(resp.Header) {
		a.copyStream(cw, r, up, *bp, rt)
		return resp.StatusCode
	}
	src := &readErrs{r: resp.Body}
	if _, err := io.CopyBuffer(cw, src, *bp); err != nil {
		if r.Context().Err() != nil || src.err == nil {
			up.abandoned = true // the client left, or writing to it failed
			return resp.StatusCode
		}
		// Status and part of the body are out: abort the connection so the
		// client sees a broken response, never a truncated success.
		up.broken = true
		a.log.Warn("replica failed mid-response", slog.String("revision", rt.rev.cfg.Name), slog.Any("error", err))
		panic(http.ErrAbortHandler)
	}
	up.eof = true
	if up.adm != nil {
		// The answer is whole: out with it before close settles the rate
		// limit, which may ask Redis.
		_ = cw.Flush()
	}
	return resp.StatusCode
}

// copyUpstreamHeaders copies a replica's end-to-end response headers to a
// client's, less the queue-proxy's usage header, which is the activator's
// alone.
func copyUpstreamHeaders(dst, src http.Header) {
	upstream.CopyEndToEnd(dst, src)
	dst.Del(openai.UsageHeader)
}

// readErrs remembers the error of its reader other than io.EOF, to tell a
// replica's failure from the client's when a copy fails.
type readErrs struct {
	r   io.Reader
	err error
}

func (e *readErrs) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// writeReply passes a failed replica's answer kept by replyFailure through.
func writeReply(w http.ResponseWriter, rt routed, f *failure) {
	copyUpstreamHeaders(w.Header(), f.reply.header)
	rt.adm.writeHeaders(w.Header())
	w.Header().Set(RevisionHeader, rt.rev.cfg.Name)
	w.Header().Set("Content-Length", strconv.Itoa(len(f.reply.body)))
	w.WriteHeader(f.status)
	_, _ = w.Write(f.reply.body)
}

// copyStream forwards SSE events as they arrive, whole events only, flushing
// each read. If the upstream breaks mid-stream the client gets one error
// event instead of a torn one.
func (a *Activator) copyStream(w *httpserver.ClientWriter, r *http.Request, up *inflight, buf []byte, rt routed) {
	body := up.resp.Body
	pending := 0
	for {
		n, err := body.Read(buf[pending:])
		pending += n
		if cut := openai.CompleteEvents(buf[:pending]); cut > 0 {
			if _, werr := w.Write(buf[:cut]); werr != nil {
				up.abandoned = true
				return // client gone; deferred close cancels upstream
			}
			if werr := w.Flush(); werr != nil {
				up.abandoned = true
				return // client gone or not reading
			}
			pending = copy(buf, buf[cut:pending])
		}
		if err == io.EOF {
			up.eof = true
			return
		}
		if err != nil {
			if r.Context().Err() != nil {
				up.abandoned = true
				return
			}
			up.broken = true
			a.log.Warn("replica failed mid-stream", slog.String("revision", rt.rev.cfg.Name), slog.Any("error", err))
			_, _ = w.Write(openai.ErrorEvent(openai.Err(openai.TypeServer, "upstream_failed",
				"the model replica failed while streaming: "+err.Error())))
			_ = w.Flush()
			return
		}
		if pending == len(buf) { // one event larger than the buffer: pass it on as is
			if _, werr := w.Write(buf); werr != nil {
				up.abandoned = true
				return
			}
			pending = 0
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
