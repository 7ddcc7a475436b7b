package queueproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// OpenAI paths whose requests are measured.
const (
	pathChatCompletions = "/v1/chat/completions"
	pathCompletions     = "/v1/completions"
	pathEmbeddings      = "/v1/embeddings"
)

const (
	// statusClientClosed is recorded when the client went away before any
	// response was written (nginx's convention).
	statusClientClosed = 499
	// queueFullRetryAfter is the Retry-After of a queue_full 503.
	queueFullRetryAfter = time.Second
	// copyBufferSize is the read size when relaying a response.
	copyBufferSize = 8 << 10
	// checkInterval is how often a request waiting on the engine (or in
	// the queue) is checked for its client still there: fasthttp gives a
	// handler no sign of a client that left, so the engine pool's
	// upstream.Watchdog (and the queue's wait) looks (httpserver.PeerClosed).
	checkInterval = 100 * time.Millisecond
)

// errUpgrade is the failure of an engine that switches protocols on a
// request that asked for no upgrade.
var errUpgrade = errors.New("the engine answered 101 Switching Protocols to a request that asked for no upgrade")

// exchange is the accounting of one proxied request.
type exchange struct {
	start      time.Time
	code       int  // status sent to the client; 0 while none was written
	clientGone bool // the client went away before the end
	broken     bool // the response failed after it started (engine died, engine error event, timeout)

	usage       *openai.Usage
	hasTTFT     bool
	ttft        time.Duration
	lastContent time.Time
	itlSum      time.Duration
	itlCount    uint64
}

// flow is one proxied request, from its arrival to the end of its response.
// A response the engine streams (SSE, or one of unknown length) is written
// by fasthttp after the handler returned, from the flow itself (WriteTo);
// the flow is finished (accounted, its connection to the engine released)
// when that ends. Flows are pooled.
type flow struct {
	httpserver.StreamBody
	p      *Proxy
	ctx    *fasthttp.RequestCtx
	client net.Conn // the client's connection, watched while waiting

	ex                               exchange
	accounted, measured, strip, head bool
	admitted                         bool // holds a slot of the limit
	streaming                        bool // the response body is the flow (WriteTo), finished by CloseWithError
	sse                              bool // the stream is relayed event by event
	bodyDone                         bool // the engine's response was read to its end

	body         httpserver.Body // the request body, until it is sent
	idx          openai.Index    // the storage of its parsed index, kept by reset
	kt           *kvTicket       // the request's part in the KV model; nil when not modelled
	engineStatus int             // the engine's response status; 0 while none
	deadline     time.Time       // the request timeout

	conn   *upstream.Conn     // to the engine
	resp   *fasthttp.Response // the engine's response (its body streamed)
	stream io.Reader          // the engine's response body

	// Relay state.
	events  openai.EventSplitter
	meter   meter
	metered bool
	prefix  []byte // response bytes already read, relayed first
	armer   httpserver.WriteArmer
	usage   usageBuf // holds ex.usage
	usage2  usageBuf // scratch of the meter
	scratch [64]byte
}

var flowPool = sync.Pool{New: func() any { return new(flow) }}

// Gone reports whether the client went away (upstream.Watcher).
func (f *flow) Gone() bool { return httpserver.PeerClosed(f.client) }

// isInference reports whether a request is one of the OpenAI inference
// requests the queue-proxy counts and limits.
func isInference(post bool, path []byte) bool {
	if !post {
		return false
	}
	switch string(path) {
	case pathChatCompletions, pathCompletions, pathEmbeddings:
		return true
	}
	return false
}

// serveProxy relays one request to the engine.
func (p *Proxy) serveProxy(ctx *fasthttp.RequestCtx) {
	p.health.Enter()
	f := flowPool.Get().(*flow)
	f.p, f.ctx, f.client = p, ctx, ctx.Conn()
	f.ex.start = time.Now()
	f.deadline = f.ex.start.Add(p.cfg.RequestTimeout)
	path := ctx.Path()
	post := ctx.IsPost()
	// Only inference is counted and limited: the activator's tokenization
	// of a prompt (the engine's /tokenize, before routing) and other engine
	// endpoints neither wait for a slot nor count as requests.
	f.accounted = isInference(post, path)
	f.measured = post && (string(path) == pathChatCompletions || string(path) == pathCompletions)
	f.head = ctx.IsHead()
	f.serve()
	if !f.streaming {
		f.finish()
	}
}

// serve reads the request, sends it to the engine and answers, or hands the
// response over to fasthttp as a stream.
func (f *flow) serve() {
	p, ctx := f.p, f.ctx
	if fail := p.bodies.ReadRequest(ctx, &f.body); fail != nil {
		f.ex.code = fail.Status
		fail.Respond(ctx)
		return
	}
	body := f.body.Bytes
	if f.measured {
		// Parsed once, for both the KV model and the usage splice; a body
		// that is not a JSON object goes on as it is, for the engine to judge.
		if obj, err := f.idx.Parse(body); err == nil {
			if p.kv != nil {
				f.kt = p.kv.prepare(obj, string(ctx.Path()) == pathChatCompletions)
			}
			body, f.strip = requestUsage(obj)
		}
	}
	if f.accounted && !f.admit() {
		if f.kt != nil {
			p.kv.release(f.kt)
			f.kt = nil
		}
		return
	}
	if f.kt != nil {
		p.kv.sent(f.kt)
	}
	err := f.roundTrip(body)
	f.body.Release() // sent, or never will be
	if err != nil {
		f.roundTripFailed(err)
		return
	}
	f.engineStatus = f.resp.StatusCode()
	switch {
	case f.stream != nil && isEventStream(&f.resp.Header):
		f.startStream(true, nil)
	case f.measured:
		f.forwardBuffered()
	default:
		f.forwardOther()
	}
}

// requestUsage makes a streaming request, parsed as obj, ask for usage and
// returns the body to send. When the client did not ask, it sets
// stream_options.include_usage (keeping other options) and reports that the
// usage-only chunk must be hidden from the client.
func requestUsage(obj openai.Object) (out []byte, strip bool) {
	body := obj.Raw()
	if !obj.Bool("stream") {
		return body, false
	}
	if raw, ok := obj.Get("stream_options"); ok {
		if opts, err := openai.Parse(raw); err == nil {
			if opts.Bool("include_usage") {
				return body, false
			}
			return obj.Set("stream_options", opts.Set("include_usage", []byte("true"))), true
		}
	}
	return obj.Set("stream_options", []byte(`{"include_usage":true}`)), true
}

// admit waits for the concurrency limit. It answers the client itself when
// the request cannot go on.
func (f *flow) admit() bool {
	p := f.p
	if p.limiter != nil {
		err := p.limiter.acquireWatch(f.deadline, checkInterval, f)
		switch {
		case errors.Is(err, errQueueFull):
			f.writeError(fasthttp.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "queue_full",
				"the replica is at its concurrency limit and its queue is full"), queueFullRetryAfter)
			return false
		case errors.Is(err, errGone):
			f.clientLeft()
			return false
		case err != nil:
			f.writeError(fasthttp.StatusGatewayTimeout, openai.Err(openai.TypeTimeout, "request_timeout",
				"the request timed out waiting for the concurrency limit"), 0)
			return false
		}
	}
	p.inFlight.Add(1)
	f.admitted = true
	return true
}

// leave undoes a successful admit.
func (p *Proxy) leave() {
	p.inFlight.Add(-1)
	if p.limiter != nil {
		p.limiter.release()
	}
}

// clientLeft records that the client went away before an answer, and
// answers 499 in case it only half-closed and still reads; the connection
// is closed after it.
func (f *flow) clientLeft() {
	f.ex.clientGone = true
	f.ctx.Response.SetConnectionClose()
	httpserver.WriteError(f.ctx, statusClientClosed, openai.Err(openai.TypeInvalidRequest, "client_closed_request",
		"the client closed its connection before the answer"), 0)
}

// roundTrip sends the request to the engine and reads the response's head;
// the body is left to stream from f.stream. A pooled connection the engine
// closed while idle fails at once, before the engine saw anything: the
// request is sent once more on a new one.
func (f *flow) roundTrip(body []byte) error {
	p := f.p
	for attempt := 0; ; attempt++ {
		c, err := p.pool.Get(f.deadline)
		if err != nil {
			return err
		}
		f.writeRequest(c.Writer(), body)
		err = c.Flush()
		if err == nil {
			err = c.Wait(f.deadline, f)
		}
		if err != nil {
			c.Close()
			if attempt == 0 && c.Reused() && upstream.IsClosedIdle(err) {
				continue
			}
			return err
		}
		f.conn = c
		f.resp = fasthttp.AcquireResponse()
		f.resp.StreamBody = true
		f.resp.SkipBody = f.head
		err = f.resp.ReadLimitBody(c.Reader(), 0)
		if err == nil && f.resp.StatusCode() == fasthttp.StatusSwitchingProtocols {
			err = errUpgrade
		}
		if err != nil {
			return err // finish closes the connection
		}
		f.stream = f.resp.BodyStream()
		if f.stream == nil { // no body (HEAD, 204, 304)
			f.bodyDone = true
		}
		return nil
	}
}

// writeRequest writes the request to the engine: the client's method,
// path and query under the engine's path prefix, its end-to-end headers,
// and the body (read already) with its length.
func (f *flow) writeRequest(bw *bufio.Writer, body []byte) {
	p := f.p
	h := &f.ctx.Request.Header
	_, _ = bw.Write(h.Method())
	_ = bw.WriteByte(' ')
	_, _ = bw.WriteString(p.enginePrefix)
	if uri := h.RequestURI(); len(uri) > 0 && uri[0] == '/' {
		_, _ = bw.Write(uri) // as sent: no cleaning, no decoding
	} else { // absolute form
		_, _ = bw.Write(f.ctx.URI().RequestURI())
	}
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(p.engineHost)
	_, _ = bw.WriteString("\r\nContent-Length: ")
	_, _ = bw.Write(strconv.AppendInt(f.scratch[:0], int64(len(body)), 10))
	_, _ = bw.WriteString("\r\n")
	conn := h.PeekAll("Connection")
	forwarded := false
	for k, v := range h.All() {
		if skipRequestHeader(k, conn, f.measured) {
			forwarded = forwarded || bytes.EqualFold(k, []byte("X-Forwarded-For"))
			continue
		}
		_, _ = bw.Write(k)
		_, _ = bw.WriteString(": ")
		_, _ = bw.Write(v)
		_, _ = bw.WriteString("\r\n")
	}
	_, _ = bw.WriteString("X-Forwarded-For: ")
	if forwarded {
		for _, v := range h.PeekAll("X-Forwarded-For") {
			_, _ = bw.Write(v)
			_, _ = bw.WriteString(", ")
		}
	}
	_, _ = bw.Write(appendClientIP(f.scratch[:0], f.ctx.RemoteAddr()))
	_, _ = bw.WriteString("\r\n\r\n")
	_, _ = bw.Write(body)
}

// skipRequestHeader reports whether a client's request header stays out of
// the engine's request: hop-by-hop headers; those the proxy writes itself
// (Host, Content-Length, X-Forwarded-For); Expect (the whole body is sent at
// once); and, on measured requests, Accept-Encoding (the proxy reads the
// response).
func skipRequestHeader(k []byte, conn [][]byte, measured bool) bool {
	switch len(k) {
	case 4:
		return bytes.EqualFold(k, []byte("Host"))
	case 6:
		return bytes.EqualFold(k, []byte("Expect"))
	case 14:
		return bytes.EqualFold(k, []byte("Content-Length"))
	case 15:
		if bytes.EqualFold(k, []byte("X-Forwarded-For")) || (measured && bytes.EqualFold(k, []byte("Accept-Encoding"))) {
			return true
		}
	}
	return upstream.IsHopByHop(k, conn)
}

// appendClientIP appends the IP address of a client's remote address.
func appendClientIP(dst []byte, a net.Addr) []byte {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap().AppendTo(dst)
		}
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return append(dst, a.String()...)
	}
	return append(dst, host...)
}

// roundTripFailed answers a request that got no response from the engine.
func (f *flow) roundTripFailed(err error) {
	p := f.p
	switch {
	case errors.Is(err, upstream.ErrCallerGone):
		f.clientLeft()
	case f.pastDeadline(err):
		f.writeError(fasthttp.StatusGatewayTimeout, openai.Err(openai.TypeTimeout, "request_timeout",
			"the engine did not answer within the request timeout"), 0)
	default:
		if _, ok := errors.AsType[upstream.DialError](err); ok {
			p.health.MarkUnready(context.Background(), "request")
		}
		p.log.Warn("engine unavailable", slog.String("path", string(f.ctx.Path())), slog.Any("error", err))
		f.writeError(fasthttp.StatusBadGateway, openai.Err(openai.TypeServer, "engine_unavailable",
			"the inference engine is unavailable: "+err.Error()), 0)
	}
}

// pastDeadline reports whether err is the request timeout.
func (f *flow) pastDeadline(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(f.deadline)
}

// forwardBuffered reads a measured, non-streaming response whole before
// answering, so that a failure mid-body becomes a clean error rather than a
// truncated 200. A response over MaxBufferedResponseBytes is passed through
// as it arrives, unmeasured.
func (f *flow) forwardBuffered() {
	whole, err := f.readBody()
	if err != nil {
		f.responseFailed(err)
		return
	}
	f.copyHeaders()
	if !whole {
		f.startStream(false, f.prefix)
		return
	}
	if f.engineStatus/100 == 2 {
		f.ex.usage = usageOf(f.ctx.Response.Body(), &f.usage)
		if f.ex.usage != nil {
			f.ctx.Response.Header.SetBytesV(openai.UsageHeader, appendUsageHeader(f.scratch[:0], f.ex.usage))
		}
	}
	f.ex.code = f.engineStatus
	f.ctx.Response.SetStatusCode(f.engineStatus)
}

// forwardOther relays an unmeasured, non-SSE response: one of known length
// up to MaxBufferedResponseBytes is read whole (a failure mid-body is a
// clean 502), others stream through as they arrive, flushed after every
// read when their length is unknown.
func (f *flow) forwardOther() {
	if cl := f.resp.Header.ContentLength(); f.stream != nil && (cl < 0 || int64(cl) > f.p.cfg.MaxBufferedResponseBytes) {
		f.copyHeaders()
		f.startStream(false, nil)
		return
	}
	if _, err := f.readBody(); err != nil {
		f.responseFailed(err)
		return
	}
	f.copyHeaders()
	f.ex.code = f.engineStatus
	f.ctx.Response.SetStatusCode(f.engineStatus)
}

// responseFailed answers a response whose body failed before anything was
// sent.
func (f *flow) responseFailed(err error) {
	if f.pastDeadline(err) {
		f.writeError(fasthttp.StatusGatewayTimeout, openai.Err(openai.TypeTimeout, "request_timeout",
			"the engine did not finish the response within the request timeout"), 0)
		return
	}
	f.p.log.Warn("engine response broken", slog.String("path", string(f.ctx.Path())), slog.Any("error", err))
	f.writeError(fasthttp.StatusBadGateway, openai.Err(openai.TypeServer, "engine_unavailable",
		"the inference engine failed mid-response: "+err.Error()), 0)
}

// readBody reads the engine's response body into the client's response
// (fasthttp's pooled body buffer), up to MaxBufferedResponseBytes. whole is
// false when the body is longer: then f.prefix holds what was read (of a
// body of unknown length) and the rest is still to stream.
func (f *flow) readBody() (whole bool, err error) {
	if f.stream == nil {
		return true, nil
	}
	limit := f.p.cfg.MaxBufferedResponseBytes
	cl := f.resp.Header.ContentLength()
	if cl >= 0 && int64(cl) > limit {
		return false, nil
	}
	resp := &f.ctx.Response
	buf := resp.SwapBody(nil)[:0]
	if cl >= 0 {
		buf = slices.Grow(buf, cl)[:cl]
		if _, err = io.ReadFull(f.stream, buf); err != nil {
			resp.SwapBody(buf[:0])
			return false, err
		}
		f.bodyDone = true
		resp.SwapBody(buf)
		return true, nil
	}
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(cap(buf), copyBufferSize))
		}
		n, rerr := f.stream.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			f.prefix = buf // the response buffer goes to the GC with it
			return false, nil
		}
		if rerr == io.EOF {
			f.bodyDone = true
			resp.SwapBody(buf)
			return true, nil
		}
		if rerr != nil {
			resp.SwapBody(buf[:0])
			return false, rerr
		}
	}
}

// copyHeaders copies the engine's status and end-to-end response headers to
// the client's response, without its Content-Length (fasthttp frames the
// body), Date (fasthttp writes its own) and usage header: only the
// queue-proxy's own measurement reaches the activator under that name.
func (f *flow) copyHeaders() {
	src, dst := &f.resp.Header, &f.ctx.Response.Header
	conn := src.PeekAll("Connection")
	for k, v := range src.All() {
		switch {
		case upstream.IsHopByHop(k, conn),
			bytes.EqualFold(k, []byte("Content-Length")),
			bytes.EqualFold(k, []byte("Date")),
			bytes.EqualFold(k, []byte(openai.UsageHeader)):
			continue
		}
		dst.AddBytesKV(k, v)
	}
}

// isEventStream reports whether the engine's response is an uncompressed
// SSE stream.
func isEventStream(h *fasthttp.ResponseHeader) bool {
	mt := h.ContentType()
	if i := bytes.IndexByte(mt, ';'); i >= 0 {
		mt = mt[:i]
	}
	if !bytes.EqualFold(bytes.TrimSpace(mt), []byte("text/event-stream")) {
		return false
	}
	ce := h.ContentEncoding()
	return len(ce) == 0 || bytes.EqualFold(ce, []byte("identity"))
}

// writeError answers with an OpenAI-shaped error.
func (f *flow) writeError(status int, e openai.Error, retryAfter time.Duration) {
	f.ex.code = status
	httpserver.WriteError(f.ctx, status, e, retryAfter)
}

// finish ends the flow: the engine connection goes back to the pool (or is
// closed, which cancels what the engine still does for it), the KV model,
// the limit and the counters learn the outcome, and the flow goes back to
// its pool.
func (f *flow) finish() {
	p := f.p
	if f.resp != nil {
		_ = f.resp.CloseBodyStream()
	}
	if f.conn != nil {
		if f.bodyDone && !f.resp.ConnectionClose() {
			f.conn.Release()
		} else {
			f.conn.Close()
		}
	}
	if f.resp != nil {
		fasthttp.ReleaseResponse(f.resp)
	}
	if f.kt != nil {
		p.kv.finish(f.kt, kvOutcomeOf(f.engineStatus, &f.ex), f.ex.usage)
	}
	if f.admitted {
		p.leave()
	}
	f.body.Release()
	if f.accounted {
		p.record(f.ctx, &f.ex)
	}
	p.health.Leave()
	f.reset()
	flowPool.Put(f)
}

// reset clears a flow for its pool, keeping its buffers: the event
// splitter's too when it holds nothing (it is then as new), and the parsed
// index's storage.
func (f *flow) reset() {
	events := f.events
	if len(events.Rest()) > 0 || cap(events.Rest()) > 64<<10 {
		events = openai.EventSplitter{}
	}
	*f = flow{events: events, idx: f.idx}
}

// meter measures the events of one stream.
type meter struct {
	ex    *exchange
	strip bool
	itl   prometheus.Observer
	usage *usageBuf // holds ex.usage; nil: allocate
	tmp   *usageBuf // scratch of a usage being read; nil: allocate
}

// chunk is the part of a streamed completion chunk the proxy reads.
type chunk struct {
	Choices []struct {
		Text  string `json:"text"`
		Delta struct {
			Content          string          `json:"content"`
			ReasoningContent string          `json:"reasoning_content"`
			Reasoning        string          `json:"reasoning"`
			ToolCalls        json.RawMessage `json:"tool_calls"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *openai.Usage   `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// event measures one SSE event that arrived at now and reports whether it
// is forwarded to the client.
func (m *meter) event(ev []byte, now time.Time) bool {
	data, ok := openai.EventData(ev)
	if !ok || bytes.Equal(data, openai.DoneData) {
		return true
	}
	if !json.Valid(data) {
		return true // not JSON: not ours to judge
	}
	ub, tmp := m.usage, m.tmp
	if ub == nil || tmp == nil {
		ub, tmp = new(usageBuf), new(usageBuf)
	}
	cf, ok := fastChunk(data, ub, tmp)
	if !ok {
		cf = slowChunk(data)
	}
	if cf.hasError {
		m.ex.broken = true // the engine reported an error in the stream
	}
	if cf.usage != nil {
		m.ex.usage = cf.usage // the last one wins (vLLM's continuous usage is cumulative)
	}
	if cf.content {
		m.content(now)
	}
	if cf.choicesSet && cf.noChoices && cf.usage != nil {
		return !m.strip
	}
	return true
}

// slowChunk reads a chunk with encoding/json, for what fastChunk cannot
// read. A field of the wrong type leaves the others read.
func slowChunk(data []byte) chunkFacts {
	var c chunk
	_ = json.Unmarshal(data, &c) // valid JSON: only type errors, after which c holds what did decode
	cf := chunkFacts{hasError: len(c.Error) > 0 && string(c.Error) != "null", usage: c.Usage,
		choicesSet: c.Choices != nil, noChoices: c.Choices != nil && len(c.Choices) == 0}
	for _, ch := range c.Choices {
		d := ch.Delta
		if ch.Text != "" || d.Content != "" || d.ReasoningContent != "" || d.Reasoning != "" || hasItems(d.ToolCalls) {
			cf.content = true
			break
		}
	}
	return cf
}

// content records a content event: the first sets TTFT, later ones a gap.
func (m *meter) content(now time.Time) {
	ex := m.ex
	if !ex.hasTTFT {
		ex.hasTTFT, ex.ttft = true, now.Sub(ex.start)
	} else {
		gap := now.Sub(ex.lastContent)
		ex.itlSum += gap
		ex.itlCount++
		m.itl.Observe(gap.Seconds())
	}
	ex.lastContent = now
}

func hasItems(raw json.RawMessage) bool {
	s := string(bytes.TrimSpace(raw))
	return s != "" && s != "null" && s != "[]"
}

// record accounts for a finished request.
func (p *Proxy) record(ctx *fasthttp.RequestCtx, ex *exchange) {
	code := ex.code
	if code == 0 {
		code = statusClientClosed
	}
	failed := ex.broken || code >= 500
	var prompt, cached, completion uint64
	if u := ex.usage; u != nil {
		prompt, completion, cached = u.PromptTokens, u.CompletionTokens, u.Cached()
	}

	p.mu.Lock()
	t := &p.totals
	t.requests++
	if failed {
		t.errors++
	}
	t.promptTokens += prompt
	t.cachedTokens += cached
	t.completionTokens += completion
	if ex.hasTTFT {
		t.ttftSum += ex.ttft.Seconds()
		t.ttftCount++
	}
	t.itlSum += ex.itlSum.Seconds()
	t.itlCount += ex.itlCount
	p.mu.Unlock()

	m := p.metrics
	m.requestsWithCode(code).Inc()
	if failed {
		m.errors.Inc()
	}
	if prompt > 0 {
		m.promptTokens.Add(float64(prompt))
	}
	if cached > 0 {
		m.cachedTokens.Add(float64(cached))
	}
	if completion > 0 {
		m.completionTokens.Add(float64(completion))
	}
	if ex.hasTTFT {
		m.ttft.Observe(ex.ttft.Seconds())
	}
	elapsed := time.Since(ex.start)
	m.duration.Observe(elapsed.Seconds())

	if p.logRequests {
		p.log.LogAttrs(context.Background(), slog.LevelDebug, "request",
			slog.String("method", string(ctx.Method())), slog.String("path", string(ctx.Path())), slog.Int("code", code),
			slog.Duration("duration", elapsed), slog.Bool("clientGone", ex.clientGone), slog.Bool("broken", ex.broken),
			slog.Uint64("promptTokens", prompt), slog.Uint64("completionTokens", completion))
	}
}
