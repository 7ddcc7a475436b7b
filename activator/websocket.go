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
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// WebSocket protocol (design.md): each client text message is one request
// body plus an optional "request_id"; the server answers every chunk as one
// text message (the chunk JSON with "request_id"), then
// {"request_id": ..., "type": "done"}; errors as {"request_id": ..., "error": {...}}.

const wsWriteTimeout = 10 * time.Second

var upgrader = websocket.Upgrader{
	ReadBufferSize:  32 << 10,
	WriteBufferSize: 32 << 10,
	// A connection holds a write buffer only while it writes a message:
	// an idle WebSocket keeps none.
	WriteBufferPool: &sync.Pool{},
	// serveWebSocket checks the origin before the upgrade (originPolicy),
	// to answer a refusal as an OpenAI error.
	CheckOrigin: func(*http.Request) bool { return true },
}

func isWebSocket(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

type wsConn struct {
	a    *Activator
	conn *websocket.Conn
	path string
	hdr  http.Header
	tag  string
	// tenant is who the connection authenticated as (nil: the API is open).
	tenant *tenant
	mu     sync.Mutex // one writer at a time
	ids    atomic.Uint64

	idMu   sync.Mutex
	active map[string]bool // request ids in flight (idKey)
}

func (a *Activator) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	if !a.origins.allows(r) {
		openai.WriteError(w, http.StatusForbidden, openai.Err(openai.TypeInvalidRequest, "origin_not_allowed", originNotAllowed), 0)
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered with an HTTP error
	}
	// No read limit of gorilla's own: readMessage enforces MaxBodyBytes and
	// the budget on what actually arrives, and answers why it refused.
	c := &wsConn{a: a, conn: conn, path: r.URL.Path, hdr: forwardableHeaders(r.Header), tag: r.Header.Get(TagHeader),
		tenant: tenantOf(r.Context()), active: map[string]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel() // a closed connection cancels its requests upstream
		wg.Wait()
		conn.Close()
	}()
	if t := a.tenants.Load(); c.tenant == nil && !t.open() && !c.awaitAuth(t) {
		return
	}
	sem := make(chan struct{}, a.cfg.MaxWebSocketInFlight)
	for {
		mt, held, ok := c.readMessage()
		if !ok {
			return
		}
		if mt != websocket.TextMessage {
			held.Release()
			c.sendError(nil, openai.Err(openai.TypeInvalidRequest, "invalid_message", "send each request as one text message"))
			continue
		}
		obj, err := openai.Parse(held.Bytes)
		if err != nil {
			held.Release()
			c.sendError(nil, openai.ParseError(err))
			continue
		}
		// A request's id is claimed here, in arrival order, and freed just
		// before its last message ("done" or an error) is sent.
		id, hasID := obj.Get("request_id")
		hasID = hasID && string(id) != "null"
		free := func() {}
		if hasID {
			var ok bool
			if free, ok = c.claim(idKey(id)); !ok {
				held.Release()
				c.sendError(id, openai.Err(openai.TypeInvalidRequest, "duplicate_request_id",
					"request_id "+string(id)+" is already in flight on this connection; reuse it after its \"done\" or error"))
				continue
			}
		}
		select {
		case sem <- struct{}{}:
		default:
			free()
			held.Release()
			c.sendError(id, openai.Err(openai.TypeRateLimit, "too_many_in_flight",
				"too many requests in flight on this connection: "+strconv.Itoa(a.cfg.MaxWebSocketInFlight)))
			continue
		}
		if !hasID {
			id, free = c.newID()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer free() // in case no last message could be sent
			defer held.Release()
			c.serve(ctx, obj, id, free)
		}()
	}
}

// readMessage reads the next whole message within the body limits of the
// HTTP API: once its first frame is in, the rest must arrive within the
// body read timeout, and it is held in memory within the shared budget. ok
// is false when the connection cannot go on (closed, too slow, too large,
// or the budget is full: the client is told why, then the connection is
// closed, since a message read in part leaves it unusable).
func (c *wsConn) readMessage() (mt int, held *httpserver.Body, ok bool) {
	mt, rd, err := c.conn.NextReader()
	if err != nil {
		if websocket.IsUnexpectedCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) {
			c.a.log.Debug("websocket closed", slog.Any("error", err))
		}
		return 0, nil, false
	}
	if t := c.a.bodies.Timeout; t > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(t))
	}
	held, f := c.a.bodies.ReadMessage(rd)
	_ = c.conn.SetReadDeadline(time.Time{}) // idle between messages is fine
	if f != nil {
		c.sendError(nil, f.Err)
		code := websocket.CloseMessageTooBig
		switch f.Status {
		case http.StatusServiceUnavailable:
			code = websocket.CloseTryAgainLater
		case http.StatusRequestTimeout, http.StatusBadRequest:
			code = websocket.ClosePolicyViolation
		}
		c.closeWith(code, f.Err.Code)
		return 0, nil, false
	}
	return mt, held, true
}

// closeWith sends a close frame with code and reason, then closes.
func (c *wsConn) closeWith(code int, reason string) {
	c.mu.Lock()
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	c.mu.Unlock()
	lingerClose(c.conn.UnderlyingConn())
}

// wsAuthTimeout bounds how long a WebSocket opened without a key may take
// to authenticate with its first message.
const wsAuthTimeout = 10 * time.Second

// errAuthFirst refuses a request sent before a connection authenticated.
var errAuthFirst = openai.Err(openai.TypeInvalidRequest, "invalid_api_key",
	`authenticate first: send {"type":"auth","api_key":KEY}, or the key as Authorization: Bearer KEY on the upgrade`)

// awaitAuth authenticates a connection opened without a key, as browsers
// open them (they cannot set headers): its first message is then
// {"type":"auth","api_key":KEY}, answered {"type":"auth","ok":true}. A
// request before it is refused (401 invalid_api_key, its request_id kept)
// and the wait goes on; an unknown key, or no auth within a.authTimeout,
// is told and closes the connection (policy violation). ok is false when
// the connection is closed.
func (c *wsConn) awaitAuth(t *tenantTable) (ok bool) {
	deadline := time.Now().Add(c.a.authTimeout)
	for {
		_ = c.conn.SetReadDeadline(deadline)
		mt, held, ok := c.readMessage()
		if !ok {
			c.sendError(nil, openai.Err(openai.TypeInvalidRequest, "invalid_api_key",
				"no auth message within "+c.a.authTimeout.String()))
			c.closeWith(websocket.ClosePolicyViolation, "invalid_api_key")
			return false
		}
		obj, err := openai.Parse(held.Bytes)
		held.Release()
		if err != nil || mt != websocket.TextMessage {
			c.sendError(nil, errAuthFirst)
			continue
		}
		if typ, _ := obj.String("type"); typ != "auth" {
			id, _ := obj.Get("request_id")
			c.sendError(id, errAuthFirst)
			continue
		}
		key, _ := obj.String("api_key")
		tn, found := t.lookup(key)
		if !found {
			c.sendError(nil, errInvalidKey)
			c.closeWith(websocket.ClosePolicyViolation, "invalid_api_key")
			return false
		}
		c.tenant = tn
		c.hdr.Del("Authorization") // an upgrade's key of another time is no engine's business
		return c.send([]byte(`{"type":"auth","ok":true}`)) == nil
	}
}

// lingerClose closes a connection whose client may still be sending (the
// rest of a message refused): it half-closes, discards what arrives for up
// to a second, then closes, so that the client reads the close frame
// rather than a reset that would discard it.
func lingerClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, conn)
	}
	_ = conn.Close()
}

// idKey is the identity of a raw request_id: ids equal as JSON values are
// one id ("a" and "\u0061", 7 and 7.0), as the client reads them back.
func idKey(raw []byte) string {
	if raw[0] == '"' {
		if bytes.IndexByte(raw, '\\') < 0 {
			return "s" + string(raw[1:len(raw)-1])
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return "s" + s
		}
	}
	var v any
	if json.Unmarshal(raw, &v) == nil {
		if b, err := json.Marshal(v); err == nil {
			return "v" + string(b)
		}
	}
	return "v" + string(raw)
}

// claim marks a request id (idKey) in flight and returns the function that
// ends the flight: its first call frees the id, later ones do nothing (by
// then the id may be another request's). ok is false when the id is in
// flight already. The function is called by one goroutine at a time.
func (c *wsConn) claim(key string) (free func(), ok bool) {
	c.idMu.Lock()
	defer c.idMu.Unlock()
	if c.active[key] {
		return nil, false
	}
	c.active[key] = true
	freed := false
	return func() {
		if freed {
			return
		}
		freed = true
		c.idMu.Lock()
		defer c.idMu.Unlock()
		delete(c.active, key)
	}, true
}

// newID claims a connection-unique id for a request that sent none.
func (c *wsConn) newID() ([]byte, func()) {
	for {
		id := strconv.AppendQuote(nil, "ws-"+strconv.FormatUint(c.ids.Add(1), 10))
		if free, ok := c.claim(idKey(id)); ok {
			return id, free
		}
	}
}

// forwardableHeaders keeps the headers of the upgrade request that mean
// something to an engine (authorization and custom ones).
func forwardableHeaders(h http.Header) http.Header {
	out := http.Header{}
	for k, v := range h {
		if k == "Authorization" || (strings.HasPrefix(k, "X-") && k != TagHeader) {
			out[k] = v
		}
	}
	return out
}

// serve answers one request of the connection; free ends the flight of its
// id, which happens before the request's last message is sent so that the
// client may reuse the id the moment it reads that message.
func (c *wsConn) serve(ctx context.Context, obj openai.Object, id []byte, free func()) {
	start := time.Now()
	w := wsReply{c: c, id: id, free: free}
	rt, f := c.a.route(obj, c.path, c.tag, c.tenant)
	if f != nil {
		w.fail(f.err)
		return
	}
	defer rt.done()
	if f := c.a.admit(ctx, &rt); f != nil {
		if f.status != 499 {
			w.fail(f.err) // a refusal of the limits: the error of the HTTP 429 (or 503)
		}
		c.a.observe(rt, f.status, start)
		return
	}
	if _, ok := obj.Get("request_id"); ok { // request_id is ours, not the engine's
		if o, err := openai.Parse(rt.body); err == nil {
			rt.body = o.Delete("request_id")
		}
	}
	up, f := c.a.dispatch(ctx, rt, c.path, &fwdHeader{std: c.hdr}, nil)
	if f != nil {
		rt.adm.settleFailed(f)
		if f.status != 499 {
			w.fail(f.err)
		}
		c.a.observe(rt, f.status, start)
		return
	}
	defer up.close()
	c.a.observe(rt, up.status, start)
	switch {
	case up.status >= 400:
		var body []byte
		var err error
		if up.body != nil {
			body, err = io.ReadAll(io.LimitReader(up.body, 1<<20))
		}
		up.broken = err != nil && ctx.Err() == nil
		w.fail(upstreamError(up.status, body))
	case up.body == nil:
		up.eof = true
		w.done()
	case !isEventStream(&up.up.resp.Header):
		w.relayBody(ctx, up)
	default:
		w.relayStream(ctx, up)
	}
}

// wsReply answers one request of a connection: id tags its messages, and
// free ends the flight of the id just before the last one is sent.
type wsReply struct {
	c    *wsConn
	id   []byte
	free func()
}

// fail ends the request with an error message.
func (w wsReply) fail(e openai.Error) {
	w.free()
	w.c.sendError(w.id, e)
}

// done ends the request with its "done" message.
func (w wsReply) done() {
	w.free()
	w.c.sendDone(w.id)
}

// relayBody sends a whole (not streamed) answer as one message, then
// "done".
func (w wsReply) relayBody(ctx context.Context, up *inflight) {
	body, err := io.ReadAll(io.LimitReader(up.body, w.c.a.cfg.MaxBodyBytes*4))
	if err != nil {
		if ctx.Err() != nil {
			up.abandoned = true
			return
		}
		up.broken = true
		w.fail(openai.Err(openai.TypeServer, "upstream_failed", "the model replica failed mid-response: "+err.Error()))
		return
	}
	up.eof = true
	if w.c.send(withRequestID(w.id, bytes.TrimSpace(body))) != nil {
		up.abandoned = true
		return
	}
	w.done()
}

// relayStream sends each event of a streamed answer as one message, then
// "done"; an error event ends the request.
func (w wsReply) relayStream(ctx context.Context, up *inflight) {
	var split openai.EventSplitter
	onEvent := func(ev []byte) error { return w.relayEvent(up, ev) }
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		n, err := up.body.Read(*bp)
		if split.Feed((*bp)[:n], onEvent) != nil {
			return // error already sent, or the connection is gone
		}
		if err == io.EOF {
			up.eof = true
			w.done()
			return
		}
		if err != nil {
			if ctx.Err() != nil {
				up.abandoned = true
				return
			}
			up.broken = true
			w.fail(openai.Err(openai.TypeServer, "upstream_failed", "the model replica failed while streaming: "+err.Error()))
			return
		}
	}
}

// relayEvent sends one event of a streamed answer. It returns an error to
// stop the stream: io.EOF after an error event, which it sends as the
// request's last message, or the connection's error.
func (w wsReply) relayEvent(up *inflight, ev []byte) error {
	data, ok := openai.EventData(ev)
	if !ok || bytes.Equal(data, openai.DoneData) {
		return nil
	}
	if o, perr := openai.Parse(data); perr == nil {
		if e, has := o.Get("error"); has {
			w.free()
			w.c.sendRaw(w.id, "error", e)
			return io.EOF
		}
	}
	if err := w.c.send(withRequestID(w.id, data)); err != nil {
		up.abandoned = true
		return err
	}
	return nil
}

// upstreamError extracts an OpenAI error from an engine's error body.
func upstreamError(status int, body []byte) openai.Error {
	var env openai.Envelope
	if json.Unmarshal(body, &env) == nil && env.Error.Message != "" {
		return env.Error
	}
	return openai.Err(openai.TypeServer, "upstream_error", http.StatusText(status)+": "+string(bytes.TrimSpace(body)))
}

// withRequestID turns an engine payload (an SSE event's data, or a whole
// body) into a message for the client: the JSON object with "request_id"
// inserted as its first member (an engine's own "request_id" dropped). A
// payload that is not a JSON object, which no engine should send, goes as
// the string "data": {"request_id": ..., "data": "<payload>"}.
func withRequestID(id, obj []byte) []byte {
	obj = bytes.Trim(obj, " \t\r\n")
	switch o, err := openai.Parse(obj); {
	case err == nil:
		if _, has := o.Get("request_id"); has {
			obj = o.Delete("request_id")
		}
	case errors.Is(err, openai.ErrDuplicateKey): // an object all the same
	default:
		data, _ := json.Marshal(string(obj)) // a string always marshals
		obj = append(append([]byte(`{"data":`), data...), '}')
	}
	out := make([]byte, 0, len(obj)+len(id)+16)
	out = append(out, `{"request_id":`...)
	out = append(out, id...)
	rest := bytes.TrimLeft(obj[1:], " \t\r\n")
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

func (c *wsConn) sendRaw(id []byte, key string, raw []byte) {
	if id == nil {
		id = []byte("null")
	}
	msg := make([]byte, 0, len(raw)+len(id)+32)
	msg = append(msg, `{"request_id":`...)
	msg = append(msg, id...)
	msg = append(msg, `,"`...)
	msg = append(msg, key...)
	msg = append(msg, `":`...)
	msg = append(msg, raw...)
	msg = append(msg, '}')
	_ = c.send(msg)
}

func (c *wsConn) sendError(id []byte, e openai.Error) {
	raw, _ := json.Marshal(e)
	c.sendRaw(id, "error", raw)
}

func (c *wsConn) sendDone(id []byte) { c.sendRaw(id, "type", []byte(`"done"`)) }

func (c *wsConn) send(msg []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(wsWriteTimeout))
	return c.conn.WriteMessage(websocket.TextMessage, msg)
}
