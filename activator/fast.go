package activator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// FastHandler returns the OpenAI API handler (HTTP and WebSocket), for
// httpserver.FastServer (which streams request bodies, as ServeFast reads
// them).
func (a *Activator) FastHandler() fasthttp.RequestHandler { return a.ServeFast }

// ServeFast serves one request of the OpenAI API: it authenticates it
// (with tenants), then routes on the path: the inference endpoints (HTTP,
// or a WebSocket upgrade), the models, and an OpenAI 404 for anything
// else.
func (a *Activator) ServeFast(ctx *fasthttp.RequestCtx) {
	path := ctx.Path()
	inference := inferencePath(path)
	tn, ok := a.authenticateFast(ctx, inference)
	if !ok {
		return
	}
	switch {
	case inference != "":
		a.serveInferenceFast(ctx, inference, tn)
	case (ctx.IsGet() || ctx.IsHead()) && string(path) == PathModels:
		a.metrics.tenant.request(tn, "", http.StatusOK)
		writeJSONFast(ctx, http.StatusOK, a.routes.Load().modelsFor(tn))
	case (ctx.IsGet() || ctx.IsHead()) && bytes.HasPrefix(path, []byte(PathModels+"/")):
		a.serveModelFast(ctx, string(path[len(PathModels)+1:]), tn)
	default:
		a.metrics.tenant.request(tn, "", http.StatusNotFound)
		httpserver.WriteError(ctx, http.StatusNotFound, openai.Err(openai.TypeNotFound, "unknown_path", "no such endpoint: "+string(path)), 0)
	}
}

// inferencePath returns the constant of an inference path, "" for another.
func inferencePath(p []byte) string {
	switch string(p) {
	case PathChat:
		return PathChat
	case PathCompletions:
		return PathCompletions
	case PathEmbeddings:
		return PathEmbeddings
	}
	return ""
}

// authenticateFast is authenticate for fasthttp: with tenants, it refuses
// a request without a known key (401) and returns the tenant of the
// others (nil when the API is open, or for a WebSocket upgrade without a
// key, whose first message may authenticate it). The key headers are not
// forwarded (fwdHeader.stripAuth).
func (a *Activator) authenticateFast(ctx *fasthttp.RequestCtx, inference string) (*tenant, bool) {
	t := a.tenants.Load()
	if t.open() {
		return nil, true
	}
	h := &ctx.Request.Header
	key, bad := presentedKey(peekStrings(h, "Authorization"), peekStrings(h, APIKeyHeader))
	if bad == "" && key == "" && isWebSocketFast(ctx) && (inference == PathChat || inference == PathCompletions) {
		return nil, true
	}
	if bad != "" || key == "" {
		a.metrics.tenant.authFailure(cmpOr(bad, authMissing))
		unauthorizedFast(ctx, errMissingKey, bad != "")
		return nil, false
	}
	tn, found := t.lookup(key)
	if !found {
		a.metrics.tenant.authFailure(authUnknown)
		unauthorizedFast(ctx, errInvalidKey, false)
		return nil, false
	}
	return tn, true
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// peekStrings returns the values of a request header.
func peekStrings(h *fasthttp.RequestHeader, name string) []string {
	vs := h.PeekAll(name)
	if len(vs) == 0 {
		return nil
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = string(v)
	}
	return out
}

// unauthorizedFast answers 401 as OpenAI does, with the challenge of RFC
// 6750.
func unauthorizedFast(ctx *fasthttp.RequestCtx, e openai.Error, malformed bool) {
	if malformed {
		e = openai.Err(e.Type, e.Code, "malformed API key headers: send one Authorization: Bearer KEY or one api-key: KEY")
	}
	ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="kvasir"`)
	httpserver.WriteError(ctx, http.StatusUnauthorized, e, 0)
}

func isWebSocketFast(ctx *fasthttp.RequestCtx) bool {
	return ctx.IsGet() && bytes.EqualFold(ctx.Request.Header.Peek("Upgrade"), []byte("websocket"))
}

// serveModelFast describes one model: a name of /v1/models, or name@tag.
func (a *Activator) serveModelFast(ctx *fasthttp.RequestCtx, model string, tn *tenant) {
	if !tn.permitsID(model) {
		f := notAllowed(model)
		a.metrics.tenant.request(tn, "", f.status)
		httpserver.WriteError(ctx, f.status, f.err, 0)
		return
	}
	e, ok := a.routes.Load().model(model)
	if !ok {
		a.metrics.tenant.request(tn, "", http.StatusNotFound)
		httpserver.WriteError(ctx, http.StatusNotFound, openai.ModelNotFound(model), 0)
		return
	}
	a.metrics.tenant.request(tn, "", http.StatusOK)
	writeJSONFast(ctx, http.StatusOK, e)
}

func writeJSONFast(ctx *fasthttp.RequestCtx, status int, v any) {
	ctx.Response.Header.SetContentType("application/json")
	ctx.Response.SetStatusCode(status)
	_ = json.NewEncoder(ctx).Encode(v)
}

// serveWebSocketFast hands a WebSocket upgrade to the gorilla server of
// websocket.go: fasthttp hijacks the connection (after it cleared the
// connection's deadlines, so that the WebSocket's own hold), and gorilla's
// upgrader answers the handshake on it. The upgrade costs one conversion
// of the request to net/http's form per connection; the messages after it
// are gorilla's frame code either way (fasthttp/websocket is a fork of it),
// so fasthttp's own upgrader would save nothing per message and add a
// dependency.
func (a *Activator) serveWebSocketFast(ctx *fasthttp.RequestCtx, tn *tenant, stripAuth bool) {
	var r http.Request
	if err := fasthttpadaptor.ConvertRequest(ctx, &r, true); err != nil {
		httpserver.WriteError(ctx, http.StatusBadRequest, httpserver.ErrMalformedRequest, 0)
		return
	}
	c := context.Background()
	if tn != nil {
		c = context.WithValue(c, tenantKey{}, tn)
	}
	req := r.WithContext(c)
	if stripAuth {
		req.Header.Del("Authorization")
		req.Header.Del(APIKeyHeader)
	}
	if !a.origins.allows(req) {
		httpserver.WriteError(ctx, http.StatusForbidden, openai.Err(openai.TypeInvalidRequest, "origin_not_allowed", originNotAllowed), 0)
		return
	}
	raw := ctx.Conn()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(conn net.Conn) {
		w := &hijackWriter{conn: halfCloser{Conn: conn, raw: raw}, h: http.Header{}}
		a.serveWebSocket(w, req)
		w.finish()
	})
}

// halfCloser is a hijacked connection that can close its writing side
// (lingerClose), through the socket under the server's wrappers.
type halfCloser struct {
	net.Conn
	raw net.Conn
}

func (h halfCloser) CloseWrite() error {
	c := h.raw
	for range 8 {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			return cw.CloseWrite()
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	return errors.ErrUnsupported
}

// hijackWriter is the http.ResponseWriter of a hijacked connection, for
// gorilla's upgrader: Hijack hands the connection over; an answer written
// without it (the upgrader's refusal) is sent when the handler ends.
type hijackWriter struct {
	conn     net.Conn
	h        http.Header
	status   int
	body     bytes.Buffer
	hijacked bool
}

var _ http.Hijacker = (*hijackWriter)(nil)

func (w *hijackWriter) Header() http.Header { return w.h }

func (w *hijackWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *hijackWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	// gorilla's upgrader reads and writes with its own buffers (it only
	// checks that nothing is buffered here): the smallest bufio allows.
	return w.conn, bufio.NewReadWriter(bufio.NewReaderSize(w.conn, 16), bufio.NewWriterSize(w.conn, 16)), nil
}

// finish sends an answer written without a hijack; the connection is
// closed after it.
func (w *hijackWriter) finish() {
	if w.hijacked {
		return
	}
	resp := http.Response{StatusCode: cmpOrInt(w.status, http.StatusOK), ProtoMajor: 1, ProtoMinor: 1, Header: w.h,
		ContentLength: int64(w.body.Len()), Body: io.NopCloser(&w.body), Close: true}
	_ = w.conn.SetWriteDeadline(time.Now().Add(wsWriteTimeout))
	_ = resp.Write(w.conn)
}

func cmpOrInt(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// call is one HTTP inference request, from its arrival to the end of its
// answer. An answer with a body is written by fasthttp after the handler
// returned, from the call itself (WriteTo); the call is finished (the
// replica released, the limits settled, the request observed) when that
// ends.
type call struct {
	httpserver.StreamBody
	a      *Activator
	ctx    *fasthttp.RequestCtx
	path   string
	tenant *tenant
	cc     clientCtx // the request's context once routed (zero before: nothing to release)
	start  time.Time
	body   httpserver.Body
	idx    *openai.Index // the storage of body's parsed index (indexPool), until finish

	rt     routed
	routed bool
	// code is the status to observe once the call ends (0: the request did
	// not resolve to a revision, and was counted already).
	code int
	up   *inflight
	// sse: the answer is relayed event by event.
	sse     bool
	pending int
	buf     *[]byte
	armer   httpserver.WriteArmer
}

var (
	_ httpserver.Stream            = (*call)(nil)
	_ fasthttp.BodyWriterTo        = (*call)(nil)
	_ fasthttp.ReadCloserWithError = (*call)(nil)
	_ upstream.Watcher             = (*call)(nil)
)

// Gone reports whether the client left (upstream.Watcher). When it did,
// the request's client context ends too, so that whatever of the request
// still looks at ctx (a prefill's fallback, the decode attempt after a
// tokenization) sees it gone.
func (c *call) Gone() bool { return c.cc.Gone() }

func (a *Activator) serveInferenceFast(ctx *fasthttp.RequestCtx, path string, tn *tenant) {
	if isWebSocketFast(ctx) && path != PathEmbeddings {
		a.serveWebSocketFast(ctx, tn, !a.tenants.Load().open())
		return
	}
	if !ctx.IsPost() {
		a.metrics.tenant.request(tn, "", http.StatusMethodNotAllowed)
		ctx.Response.Header.Set("Allow", http.MethodPost)
		httpserver.WriteError(ctx, http.StatusMethodNotAllowed, openai.Err(openai.TypeInvalidRequest, "method_not_allowed",
			string(ctx.Method())+" is not allowed on "+path), 0)
		return
	}
	c := &call{a: a, ctx: ctx, path: path, tenant: tn, start: time.Now()}
	if !c.serve() {
		c.finish()
	}
}

// serve answers the request; it reports whether the answer is a stream
// (then CloseWithError finishes the call).
func (c *call) serve() (streaming bool) {
	a, ctx := c.a, c.ctx
	if f := a.bodies.ReadRequest(ctx, &c.body); f != nil {
		a.metrics.tenant.request(c.tenant, "", f.Status)
		f.Respond(ctx)
		return false
	}
	c.idx = indexPool.Get().(*openai.Index)
	obj, err := c.idx.Parse(c.body.Bytes)
	if err != nil {
		a.metrics.tenant.request(c.tenant, "", http.StatusBadRequest)
		c.writeFailure(&failure{status: http.StatusBadRequest, err: openai.ParseError(err)})
		return false
	}
	rt, f := a.route(obj, c.path, string(ctx.Request.Header.Peek(TagHeader)), c.tenant)
	if f != nil {
		c.writeFailure(f)
		return false
	}
	c.rt, c.routed = rt, true
	c.cc = clientCtx{conn: ctx.Conn(), dog: a.dog, tenant: c.tenant}
	if f := a.admit(&c.cc, &c.rt); f != nil {
		if f.status != 499 {
			c.writeFailure(f)
		} else {
			c.clientLeft()
		}
		c.code = f.status
		return false
	}
	hdr := fwdHeader{fast: &ctx.Request.Header, stripAuth: !a.tenants.Load().open()}
	up, f := a.dispatch(&c.cc, c.rt, c.path, &hdr, c)
	c.body.Release() // sent, or never will be
	// The prompt's text and block hashes were for the pick and the
	// estimate: their pooled buffers go back now, not when a long stream
	// ends (2,000 streams held 35 MiB of them).
	c.rt.req.Release()
	if f != nil {
		c.rt.adm.settleFailed(f)
		switch {
		case f.reply != nil:
			c.writeReply(f)
		case f.status != 499:
			c.admHeaders()
			httpserver.WriteError(ctx, f.status, f.err, f.retryAfter)
		default:
			c.clientLeft()
		}
		c.code = f.status
		return false
	}
	c.up, c.code = up, up.status
	c.copyHeaders()
	ctx.Response.SetStatusCode(up.status)
	if up.body == nil { // no body (204, 304)
		up.eof = true
		return false
	}
	// A client that takes nothing of the answer for the write timeout (a
	// stream it never reads) is cut off, which cancels the replica's work.
	c.armer.Reset(ctx.Conn(), a.writeTimeout)
	length := -1
	if c.sse = isEventStream(&up.up.resp.Header); !c.sse {
		length = up.up.resp.Header.ContentLength()
	}
	// The client of a stream learns at once that its request is under
	// way; a body of known length goes out with its head, in one write.
	ctx.Response.ImmediateHeaderFlush = length < 0
	httpserver.SetStream(ctx, c, length, &c.armer)
	return true
}

// copyHeaders puts the replica's end-to-end headers, the rate limit's and
// the revision's on the answer.
func (c *call) copyHeaders() {
	src, dst := &c.up.up.resp.Header, &c.ctx.Response.Header
	conn := src.PeekAll("Connection")
	for k, v := range src.All() {
		if !skipUpstreamHeader(k, conn) {
			dst.AddBytesKV(k, v)
		}
	}
	c.admHeaders()
	dst.Set(RevisionHeader, c.rt.rev.cfg.Name)
}

// admHeaders puts the x-ratelimit-* headers of a limited request on its
// answer.
func (c *call) admHeaders() {
	if ad := c.rt.adm; ad != nil {
		h := http.Header{}
		ratelimit.WriteHeaders(h, ad.d)
		setHeaders(&c.ctx.Response.Header, h)
	}
}

func setHeaders(dst *fasthttp.ResponseHeader, h http.Header) {
	for k, vv := range h {
		dst.Del(k)
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// writeFailure answers a failure before any byte of an answer (counted as
// the route counted it, or by observe).
func (c *call) writeFailure(f *failure) {
	setHeaders(&c.ctx.Response.Header, f.header)
	httpserver.WriteError(c.ctx, f.status, f.err, f.retryAfter)
	if c.routed {
		c.code = f.status
	}
}

// writeReply passes a failed replica's answer kept by replyFailure through.
func (c *call) writeReply(f *failure) {
	h := &c.ctx.Response.Header
	setHeaders(h, f.reply.header)
	c.admHeaders()
	h.Set(RevisionHeader, c.rt.rev.cfg.Name)
	c.ctx.Response.SetStatusCode(f.status)
	c.ctx.Response.SetBody(f.reply.body)
}

// clientLeft answers a request whose client left before its answer: 499,
// in case it only half-closed and still reads; the connection is closed
// after it.
func (c *call) clientLeft() {
	c.ctx.Response.SetConnectionClose()
	httpserver.WriteError(c.ctx, 499, openai.Err(openai.TypeInvalidRequest, "client_closed", "client closed the request"), 0)
}

// finish ends the call: the replica's answer and pod are released, the
// limits settled and the request observed.
func (c *call) finish() {
	if c.up != nil {
		c.up.close()
	}
	if c.routed {
		if c.code != 0 {
			c.a.observe(c.rt, c.code, c.start)
		}
		c.rt.done()
	}
	c.cc.release()
	c.releaseBuf()
	c.body.Release()
	if c.idx != nil { // the parsed body is as gone as the body
		indexPool.Put(c.idx)
		c.idx = nil
	}
}

// indexPool holds the storage of parsed request bodies' indexes: a fresh one
// each request cost a span from the heap every twenty-odd requests.
var indexPool = sync.Pool{New: func() any { return new(openai.Index) }}

// releaseBuf gives the relay's read buffer back.
func (c *call) releaseBuf() {
	if c.buf != nil {
		bufPool.Put(c.buf)
		c.buf = nil
	}
}

// CloseWithError finishes the call once fasthttp is done with the answer
// (err: why it stopped writing, nil when the answer ended).
func (c *call) CloseWithError(err error) error {
	if err != nil && !c.up.broken {
		c.up.abandoned = true
	}
	c.finish()
	return nil
}

// WriteTo relays the replica's answer to w (fasthttp's: each write of a
// stream goes out as one chunk, flushed). An SSE stream goes event by
// event, whole events only, flushed per read; a failure of the replica
// mid-stream becomes one SSE error event. Any other body is copied as it
// arrives, and cut short when the replica fails (fasthttp closes the
// connection), so that the client sees a broken answer, never a truncated
// success. While the replica sends nothing the client is looked at every
// checkInterval, and a client gone, or one that takes nothing for the
// write timeout, ends the relay: fasthttp closes its connection and finish
// the replica's, which cancels its work.
func (c *call) WriteTo(w io.Writer) (int64, error) {
	up := c.up
	var written int64
	write := func(b []byte) error {
		c.armer.Arm()
		n, err := w.Write(b)
		written += int64(n)
		if err != nil {
			up.abandoned = true
		}
		return err
	}
	// While the replica sends, the client is looked at every checkInterval
	// too: one that only half-closed its connection still takes what is
	// written, and net/http took that for leaving.
	checked := time.Now()
	for {
		if err := up.up.wait(); err != nil {
			return written, c.relayFailed(write, err)
		}
		if now := time.Now(); now.Sub(checked) >= checkInterval {
			checked = now
			if c.Gone() {
				up.abandoned = true
				return written, upstream.ErrCallerGone
			}
		}
		// The read buffer is held only while it holds bytes: a stream
		// waiting for its next event holds none (2,000 streams).
		if c.buf == nil {
			c.buf = bufPool.Get().(*[]byte)
		}
		buf := *c.buf
		n, err := up.body.Read(buf[c.pending:])
		if c.sse {
			c.pending += n
			if cut := openai.CompleteEvents(buf[:c.pending]); cut > 0 {
				if werr := write(buf[:cut]); werr != nil {
					return written, werr
				}
				c.pending = copy(buf, buf[cut:c.pending])
			}
			if c.pending == len(buf) { // one event larger than the buffer: pass it on as is
				if werr := write(buf); werr != nil {
					return written, werr
				}
				c.pending = 0
			}
		} else if n > 0 {
			if werr := write(buf[:n]); werr != nil {
				return written, werr
			}
		}
		if c.pending == 0 {
			c.releaseBuf()
		}
		if err == io.EOF {
			up.eof = true
			if up.adm != nil {
				// The answer is whole: out with it before finish settles
				// the rate limit, which may ask Redis.
				if f, ok := w.(interface{ Flush() error }); ok {
					_ = f.Flush()
				}
			}
			return written, nil
		}
		if err != nil {
			return written, c.relayFailed(write, err)
		}
	}
}

// relayFailed handles a failure to read the replica's answer mid-way.
func (c *call) relayFailed(write func([]byte) error, err error) error {
	up := c.up
	if errors.Is(err, upstream.ErrCallerGone) {
		up.abandoned = true
		return err
	}
	up.broken = true
	if !c.sse {
		c.a.log.Warn("replica failed mid-response", slog.String("revision", c.rt.rev.cfg.Name), slog.Any("error", err))
		return err
	}
	c.a.log.Warn("replica failed mid-stream", slog.String("revision", c.rt.rev.cfg.Name), slog.Any("error", err))
	return write(openai.ErrorEvent(openai.Err(openai.TypeServer, "upstream_failed",
		"the model replica failed while streaming: "+err.Error())))
}
