package queueproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

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
)

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

// isInference reports whether r is one of the OpenAI inference requests
// the queue-proxy counts and limits.
func isInference(r *http.Request) bool {
	if r.Method != http.MethodPost {
		return false
	}
	switch r.URL.Path {
	case pathChatCompletions, pathCompletions, pathEmbeddings:
		return true
	}
	return false
}

// serveProxy relays one request to the engine.
func (p *Proxy) serveProxy(w http.ResponseWriter, r *http.Request) {
	p.health.Enter()
	defer p.health.Leave()
	ex := &exchange{start: time.Now()}
	// Only inference is counted and limited: the activator's tokenization
	// of a prompt (the engine's /tokenize, before routing) and other engine
	// endpoints neither wait for a slot nor count as requests.
	accounted := isInference(r)
	if accounted {
		defer p.record(r, ex)
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.cfg.RequestTimeout)
	defer cancel()

	measured := r.Method == http.MethodPost && (r.URL.Path == pathChatCompletions || r.URL.Path == pathCompletions)
	var body []byte
	strip := false
	var kt *kvTicket // the request's part in the KV model; nil when not modelled
	if measured {
		held, ok := p.readBody(w, r, ex)
		if !ok {
			return
		}
		defer held.Release()
		body = held.Bytes
		// Parsed once, for both the KV model and the usage splice; a body
		// that is not a JSON object goes on as it is, for the engine to judge.
		if obj, err := openai.Parse(body); err == nil {
			if p.kv != nil {
				kt = p.kv.prepare(obj, r.URL.Path == pathChatCompletions)
			}
			body, strip = requestUsage(obj)
		}
	}

	if accounted {
		if !p.admit(ctx, w, r, ex) {
			if kt != nil {
				p.kv.release(kt)
			}
			return
		}
		defer p.leave()
	}
	engineStatus := 0 // the engine's response status; 0 while none
	if kt != nil {
		p.kv.sent(kt)
		defer func() { p.kv.finish(kt, kvOutcomeOf(engineStatus, ex), ex.usage) }()
	}

	var resp *http.Response
	var err error
	if measured && p.sync != nil {
		resp, err = p.sync.Do(ctx, upstream.Request{Addr: p.engine.Host, URI: p.engineURI(r), Header: p.outHeader(r), Body: body})
	} else {
		resp, err = p.transport.RoundTrip(p.outRequest(ctx, r, body, measured))
	}
	if err != nil {
		p.roundTripFailed(ctx, w, r, ex, err)
		return
	}
	defer resp.Body.Close()
	engineStatus = resp.StatusCode

	switch {
	case isEventStream(resp):
		p.forwardEvents(ctx, w, r, resp, ex, measured, strip)
	case measured:
		p.forwardBuffered(ctx, w, r, resp, ex)
	default:
		copyEngineHeaders(w.Header(), resp.Header)
		ex.code = resp.StatusCode
		w.WriteHeader(resp.StatusCode)
		p.pipe(ctx, w, r, resp.Body, resp.ContentLength < 0, ex)
	}
}

// readBody reads a measured request's body within MaxBodyBytes, the body
// read timeout and the memory budget; the caller releases it when done.
func (p *Proxy) readBody(w http.ResponseWriter, r *http.Request, ex *exchange) (*httpserver.Body, bool) {
	b, f := p.bodies.Read(w, r)
	if f != nil {
		ex.code = f.Status
		f.Write(w)
		return nil, false
	}
	return b, true
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
func (p *Proxy) admit(ctx context.Context, w http.ResponseWriter, r *http.Request, ex *exchange) bool {
	if p.limiter != nil {
		err := p.limiter.acquire(ctx)
		switch {
		case errors.Is(err, errQueueFull):
			p.writeError(w, ex, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "queue_full",
				"the replica is at its concurrency limit and its queue is full"), queueFullRetryAfter)
			return false
		case err != nil && r.Context().Err() != nil:
			ex.clientGone = true
			return false
		case err != nil:
			p.writeError(w, ex, http.StatusGatewayTimeout, openai.Err(openai.TypeTimeout, "request_timeout",
				"the request timed out waiting for the concurrency limit"), 0)
			return false
		}
	}
	p.inFlight.Add(1)
	return true
}

// leave undoes a successful admit.
func (p *Proxy) leave() {
	p.inFlight.Add(-1)
	if p.limiter != nil {
		p.limiter.release()
	}
}

// outRequest builds the request to the engine. A measured request's body is
// the (possibly spliced) bytes read; others stream through.
func (p *Proxy) outRequest(ctx context.Context, r *http.Request, body []byte, measured bool) *http.Request {
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.Close = false
	out.Host = ""
	out.URL.Scheme, out.URL.Host = p.engine.Scheme, p.engine.Host
	if base := strings.TrimSuffix(p.engine.Path, "/"); base != "" {
		out.URL.Path = base + r.URL.Path
		if r.URL.RawPath != "" {
			out.URL.RawPath = strings.TrimSuffix(p.engine.EscapedPath(), "/") + r.URL.RawPath
		}
	}
	upstream.RemoveHopByHop(out.Header)
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // do not let the client library add its own
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := out.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		out.Header.Set("X-Forwarded-For", ip)
	}
	if measured {
		out.Header.Del("Accept-Encoding") // the proxy reads the response
		out.Header.Del("Expect")          // the body is already here
		out.Header.Del("Content-Length")
		out.TransferEncoding = nil
		out.ContentLength = int64(len(body))
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return out
}

// engineURI is the request target on the engine: its path prefix, if any,
// and the client's path and query.
func (p *Proxy) engineURI(r *http.Request) string {
	if base := strings.TrimSuffix(p.engine.EscapedPath(), "/"); base != "" {
		return base + r.URL.RequestURI()
	}
	return r.URL.RequestURI()
}

// outHeader is the header of a measured request sent with the synchronous
// client, which drops hop-by-hop headers itself.
func (p *Proxy) outHeader(r *http.Request) http.Header {
	h := make(http.Header, len(r.Header)+1)
	for k, v := range r.Header {
		switch k {
		case "Accept-Encoding", "Expect": // the proxy reads the response; the body is here
		default:
			h[k] = v
		}
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h["X-Forwarded-For"] = []string{ip}
	}
	return h
}

// roundTripFailed answers a request that got no response from the engine.
func (p *Proxy) roundTripFailed(ctx context.Context, w http.ResponseWriter, r *http.Request, ex *exchange, err error) {
	switch {
	case r.Context().Err() != nil:
		ex.clientGone = true
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		p.writeError(w, ex, http.StatusGatewayTimeout, openai.Err(openai.TypeTimeout, "request_timeout",
			"the engine did not answer within the request timeout"), 0)
	default:
		if isDialError(err) {
			p.health.MarkUnready(ctx, "request")
		}
		p.log.Warn("engine unavailable", slog.String("path", r.URL.Path), slog.Any("error", err))
		p.writeError(w, ex, http.StatusBadGateway, openai.Err(openai.TypeServer, "engine_unavailable",
			"the inference engine is unavailable: "+cause(err)), 0)
	}
}

// forwardEvents relays an SSE response event by event, flushing as each one
// completes. When measured, it times content events, reads usage and hides
// the usage-only chunk if strip is set. A failure after the stream started
// becomes one SSE error event.
func (p *Proxy) forwardEvents(ctx context.Context, w http.ResponseWriter, r *http.Request, resp *http.Response, ex *exchange, measured, strip bool) {
	copyEngineHeaders(w.Header(), resp.Header)
	w.Header().Del("Content-Length") // events may be dropped
	if measured {
		w.Header().Set("Trailer", openai.UsageHeader)
		defer setUsage(w.Header(), ex) // the trailer, as the stream ends
	}
	ex.code = resp.StatusCode
	w.WriteHeader(resp.StatusCode)
	cw := httpserver.NewClientWriter(w, p.cfg.Limits.WriteTimeout) // a client that stops reading is cut off
	defer cw.Done()
	_ = cw.Flush() // headers now: the client's request is under way

	var m *meter
	if measured {
		m = &meter{ex: ex, strip: strip, observeITL: p.metrics.itl.Observe}
	}
	err := relayEvents(cw, cw.Flush, resp.Body, m)
	if err == nil {
		return
	}
	if _, ok := errors.AsType[clientError](err); ok || r.Context().Err() != nil {
		ex.clientGone = true
		return
	}
	ex.broken = true
	e := openai.Err(openai.TypeServer, "engine_unavailable", "the inference engine failed mid-stream: "+cause(err))
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		e = openai.Err(openai.TypeTimeout, "request_timeout", "the stream exceeded the request timeout")
	}
	p.log.Warn("stream broken", slog.String("path", r.URL.Path), slog.Any("error", err))
	if _, err := cw.Write(openai.ErrorEvent(e)); err == nil {
		_ = cw.Flush()
	}
}

// clientError is a failure writing to the client.
type clientError struct{ err error }

func (e clientError) Error() string { return "write to client: " + e.err.Error() }
func (e clientError) Unwrap() error { return e.err }

// relayEvents copies whole SSE events from body to w as they complete,
// flushing after each read that completed any. Bytes left after the last
// blank line are written at EOF. Client write failures come back as
// clientError; a failed read as is.
func relayEvents(w io.Writer, flush func() error, body io.Reader, m *meter) error {
	buf := make([]byte, copyBufferSize)
	var events openai.EventSplitter
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			now, wrote := time.Now(), false
			err := events.Feed(buf[:n], func(ev []byte) error {
				if m != nil && !m.event(ev, now) {
					return nil
				}
				if _, err := w.Write(ev); err != nil {
					return clientError{err}
				}
				wrote = true
				return nil
			})
			if err != nil {
				return err
			}
			if wrote {
				if err := flush(); err != nil {
					return clientError{err}
				}
			}
		}
		if rerr == io.EOF {
			if rest := events.Rest(); len(rest) > 0 {
				if _, err := w.Write(rest); err != nil {
					return clientError{err}
				}
				if err := flush(); err != nil {
					return clientError{err}
				}
			}
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// meter measures the events of one stream.
type meter struct {
	ex         *exchange
	strip      bool
	observeITL func(seconds float64)
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
	var c chunk
	if err := json.Unmarshal(data, &c); err != nil {
		if _, typeErr := errors.AsType[*json.UnmarshalTypeError](err); !typeErr {
			return true // not JSON: not ours to judge
		}
	}
	if len(c.Error) > 0 && string(c.Error) != "null" {
		m.ex.broken = true // the engine reported an error in the stream
	}
	if c.Usage != nil {
		m.ex.usage = c.Usage // the last one wins (vLLM's continuous usage is cumulative)
	}
	if c.Choices != nil && len(c.Choices) == 0 && c.Usage != nil {
		return !m.strip
	}
	for _, ch := range c.Choices {
		d := ch.Delta
		if ch.Text != "" || d.Content != "" || d.ReasoningContent != "" || d.Reasoning != "" || hasItems(d.ToolCalls) {
			m.content(now)
			break
		}
	}
	return true
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
		m.observeITL(gap.Seconds())
	}
	ex.lastContent = now
}

func hasItems(raw json.RawMessage) bool {
	s := string(bytes.TrimSpace(raw))
	return s != "" && s != "null" && s != "[]"
}

// forwardBuffered reads a measured, non-streaming response whole before
// answering, so that a failure mid-body becomes a clean error rather than a
// truncated 200. A response over MaxBufferedResponseBytes is passed through
// as it arrives, unmeasured.
func (p *Proxy) forwardBuffered(ctx context.Context, w http.ResponseWriter, r *http.Request, resp *http.Response, ex *exchange) {
	limit := p.cfg.MaxBufferedResponseBytes
	var buf bytes.Buffer
	if resp.ContentLength > 0 && resp.ContentLength <= limit {
		buf.Grow(int(resp.ContentLength))
	}
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, limit+1)); err != nil {
		switch {
		case r.Context().Err() != nil:
			ex.clientGone = true
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			p.writeError(w, ex, http.StatusGatewayTimeout, openai.Err(openai.TypeTimeout, "request_timeout",
				"the engine did not finish the response within the request timeout"), 0)
		default:
			p.log.Warn("engine response broken", slog.String("path", r.URL.Path), slog.Any("error", err))
			p.writeError(w, ex, http.StatusBadGateway, openai.Err(openai.TypeServer, "engine_unavailable",
				"the inference engine failed mid-response: "+cause(err)), 0)
		}
		return
	}
	copyEngineHeaders(w.Header(), resp.Header)
	if int64(buf.Len()) > limit {
		ex.code = resp.StatusCode
		w.WriteHeader(resp.StatusCode)
		if _, err := w.Write(buf.Bytes()); err != nil {
			ex.clientGone = true
			return
		}
		p.pipe(ctx, w, r, resp.Body, false, ex)
		return
	}
	if resp.StatusCode/100 == 2 {
		ex.usage = openai.UsageOf(buf.Bytes())
		setUsage(w.Header(), ex)
	}
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	ex.code = resp.StatusCode
	w.WriteHeader(resp.StatusCode)
	cw := httpserver.NewClientWriter(w, p.cfg.Limits.WriteTimeout)
	defer cw.Done()
	if _, err := cw.Write(buf.Bytes()); err != nil {
		ex.clientGone = true
	}
}

// copyEngineHeaders copies the engine's end-to-end response headers,
// without the platform's usage header: only the queue-proxy's own
// measurement reaches the activator under that name.
func copyEngineHeaders(dst, src http.Header) {
	upstream.CopyEndToEnd(dst, src)
	dst.Del(openai.UsageHeader)
}

// setUsage tells the activator the usage measured of the answer: a header
// on a whole answer, the declared trailer on a stream. Nothing when the
// engine reported none.
func setUsage(h http.Header, ex *exchange) {
	if ex.usage != nil {
		h.Set(openai.UsageHeader, openai.FormatUsageHeader(ex.usage))
	}
}

// pipe copies body to the client, flushing after each read if flushEach.
// If the engine fails mid-body the client connection is aborted so the
// client sees a truncated response, not a complete one.
func (p *Proxy) pipe(ctx context.Context, w http.ResponseWriter, r *http.Request, body io.Reader, flushEach bool, ex *exchange) {
	cw := httpserver.NewClientWriter(w, p.cfg.Limits.WriteTimeout)
	defer cw.Done()
	buf := make([]byte, copyBufferSize)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := cw.Write(buf[:n]); err != nil {
				ex.clientGone = true
				return
			}
			if flushEach {
				if err := cw.Flush(); err != nil {
					ex.clientGone = true
					return
				}
			}
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			if r.Context().Err() != nil {
				ex.clientGone = true
				return
			}
			ex.broken = true
			p.log.Warn("engine response broken", slog.String("path", r.URL.Path), slog.Any("error", rerr),
				slog.Bool("timeout", errors.Is(ctx.Err(), context.DeadlineExceeded)))
			panic(http.ErrAbortHandler) // deferred accounting still runs
		}
	}
}

// writeError answers with an OpenAI-shaped error.
func (p *Proxy) writeError(w http.ResponseWriter, ex *exchange, status int, e openai.Error, retryAfter time.Duration) {
	ex.code = status
	openai.WriteError(w, status, e, retryAfter)
}

// record accounts for a finished request.
func (p *Proxy) record(r *http.Request, ex *exchange) {
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
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	if failed {
		m.errors.Inc()
	}
	m.promptTokens.Add(float64(prompt))
	m.cachedTokens.Add(float64(cached))
	m.completionTokens.Add(float64(completion))
	if ex.hasTTFT {
		m.ttft.Observe(ex.ttft.Seconds())
	}
	elapsed := time.Since(ex.start)
	m.duration.Observe(elapsed.Seconds())

	p.log.Debug("request",
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("code", code),
		slog.Duration("duration", elapsed), slog.Bool("clientGone", ex.clientGone), slog.Bool("broken", ex.broken),
		slog.Uint64("promptTokens", prompt), slog.Uint64("completionTokens", completion))
}

// isEventStream reports whether resp is an uncompressed SSE stream.
func isEventStream(resp *http.Response) bool {
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "text/event-stream" {
		return false
	}
	ce := resp.Header.Get("Content-Encoding")
	return ce == "" || strings.EqualFold(ce, "identity")
}

// isDialError reports whether err is a failure to connect.
func isDialError(err error) bool {
	opErr, ok := errors.AsType[*net.OpError](err)
	return ok && opErr.Op == "dial"
}

// cause strips the method and URL that net/http puts in front of errors.
func cause(err error) string {
	if uErr, ok := errors.AsType[*url.Error](err); ok {
		return uErr.Err.Error()
	}
	return err.Error()
}
