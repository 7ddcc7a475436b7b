package activator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}

// inflight is a response being forwarded and the endpoint it holds until
// close (called once, when the response is done).
type inflight struct {
	a *Activator
	// up is the replica's answer; status its status code, body its body
	// (through the meter when metered; nil when it has none).
	up     *upResp
	status int
	body   io.Reader
	rev    *revision
	ep     *scheduler.Pod
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
	// (the queue-proxy's Kvasir-Usage) has been read with it.
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
// not a success and reported nothing, and always for a request of an open
// API (no tenant, no rate limit, no fair share: close reads nothing for
// it). Call it once the answer has been read (close).
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
	if u.usageVal != nil || u.status/100 != 2 || u.est == (ratelimit.Cost{}) {
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
	// fasthttp reads a trailer into the header: it is there once the
	// stream was read to its end, and only then.
	if v, ok := usageHeader(&u.up.resp.Header); ok {
		return v
	}
	if u.meter != nil {
		return u.meter.usage()
	}
	return nil
}

// charged reports whether anything uses the request's usage: the tenant
// metrics (countUsage), a rate limit reservation (settleServed) or a fair
// queue share (fairCharge.settle). An open API's request has none of them.
func (u *inflight) charged() bool {
	return u.tenant != nil || u.adm != nil || u.fair.tk.tenant != ""
}

func (u *inflight) close() {
	if u.charged() {
		u.computeUsage() // before the answer's head is released
	} else {
		u.usageDone = true // nothing reads it: usage stays nil
	}
	u.up.finish(u.eof)
	u.countUsage()
	u.fair.settle(u)
	o := outcomeSuccess
	switch {
	case u.broken || isGatewayFailure(u.status):
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
// that passes it through: its status, end-to-end headers and body, and
// ends the answer. A body that cannot be read whole becomes a 502 (over
// maxReply: an OpenAI error with the replica's status).
func replyFailure(u *upResp) *failure {
	status := u.resp.StatusCode()
	var body []byte
	var err error
	eof := true
	if u.body != nil {
		body, err = io.ReadAll(io.LimitReader(u, maxReply+1))
		eof = err == nil && len(body) <= maxReply
	}
	rp := &reply{header: http.Header{}, body: body}
	conn := u.resp.Header.PeekAll("Connection")
	for k, v := range u.resp.Header.All() {
		if !skipUpstreamHeader(k, conn) {
			rp.header.Add(string(k), string(v))
		}
	}
	if ct := u.resp.Header.ContentType(); len(ct) > 0 && rp.header.Get("Content-Type") == "" {
		rp.header.Set("Content-Type", string(ct))
	}
	u.finish(eof)
	statusText := strconv.Itoa(status) + " " + http.StatusText(status)
	if err != nil {
		return unreachable(fmt.Errorf("reading the replica's %s answer: %w", statusText, err))
	}
	if len(body) > maxReply {
		e := openai.Err(openai.TypeServer, "upstream_error", "the model replica answered "+statusText)
		rp.header = http.Header{"Content-Type": {"application/json"}}
		rp.body = e.JSON()
	}
	return &failure{status: status, err: upstreamError(status, rp.body), reply: rp}
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
//
// hdr is what of the client's headers goes with the request. watch, when
// set (HTTP), is asked whether the client left while the request waits on
// a replica (fasthttp gives no other sign); without it (WebSocket) ctx's
// end closes the connection to the replica.
func (a *Activator) dispatch(ctx context.Context, rt routed, path string, hdr *fwdHeader, watch upstream.Watcher) (up *inflight, f *failure) {
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
		a.tokenize(ctx, rt, model, watch)
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
			body = a.prefillFor(ctx, rt, ep, path, hdr, timeout, watch)
		}
		resp, err := a.send(ctx, ep.Address, path, hdr, body, time.Now().Add(timeout), watch)
		gone := errors.Is(err, upstream.ErrCallerGone) // the call's Gone ended ctx too
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() && !gone && ctx.Err() == nil {
			// The replica had the request for the whole timeout: it did the
			// work, so another replica must not do it again.
			a.release(rev, ep, outcomeFailure, fair.tk.tenant)
			return nil, upstreamTimeout(timeout)
		}
		if err == nil && !isRetryableStatus(resp.resp.StatusCode()) {
			up = &inflight{a: a, up: resp, status: resp.resp.StatusCode(), rev: rev, ep: ep, adm: rt.adm, fair: fair}
			if resp.body != nil {
				up.body = resp
			}
			up.meterUsage(rt)
			return up, nil
		}
		if gone || ctx.Err() != nil {
			if err == nil {
				resp.finish(false)
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
		a.retrying(rt, ep, attempt, last)
		if tried == nil {
			tried = map[string]bool{}
		}
		tried[ep.Name] = true
	}
	return nil, last
}

// upstreamTimeout is the failure of a replica that did not answer within
// the request timeout. (It and retrying are out of dispatch, so that their
// locals do not deepen the stack of every request: a request's goroutine
// relays its stream on the stack the deepest moment of dispatch grew.)
//
//go:noinline
func upstreamTimeout(timeout time.Duration) *failure {
	return &failure{status: http.StatusGatewayTimeout, err: openai.Err(openai.TypeTimeout, "upstream_timeout",
		"the model replica did not answer within the request timeout ("+timeout.String()+")"), spent: spentAll}
}

// retrying logs and counts a retry after a replica failed before the first
// byte.
//
//go:noinline
func (a *Activator) retrying(rt routed, ep *scheduler.Pod, attempt int, last *failure) {
	a.log.Warn("replica failed before the first byte; retrying", slog.String("revision", rt.rev.rev.key.Revision),
		slog.String("replica", ep.Name), slog.Int("attempt", attempt+1), slog.String("error", last.err.Message))
	a.metrics.attempts.WithLabelValues(rt.svc.cfg.Namespace, rt.svc.cfg.Name, rt.rev.cfg.Name).Inc()
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

// isEventStream reports whether an answer is an SSE stream.
func isEventStream(h *fasthttp.ResponseHeader) bool {
	return bytes.HasPrefix(h.ContentType(), []byte("text/event-stream"))
}

// skipUpstreamHeader reports whether a replica's response header stays out
// of the client's answer: hop-by-hop headers, the framing and date the
// server writes itself, and the queue-proxy's usage header, which is the
// activator's alone.
func skipUpstreamHeader(k []byte, conn [][]byte) bool {
	switch len(k) {
	case 4:
		if bytes.EqualFold(k, []byte("Date")) {
			return true
		}
	case 14:
		if bytes.EqualFold(k, []byte("Content-Length")) {
			return true
		}
	case len(openai.UsageHeader):
		if bytes.EqualFold(k, []byte(openai.UsageHeader)) {
			return true
		}
	}
	return upstream.IsHopByHop(k, conn)
}
