package activator

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

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
	// The API is for programs, not browsers: any origin may connect, as with
	// the HTTP API.
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
	mu   sync.Mutex // one writer at a time
	ids  atomic.Uint64
}

func (a *Activator) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered with an HTTP error
	}
	conn.SetReadLimit(a.cfg.MaxBodyBytes)
	c := &wsConn{a: a, conn: conn, path: r.URL.Path, hdr: forwardableHeaders(r.Header), tag: r.Header.Get(TagHeader)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel() // a closed connection cancels its requests upstream
		wg.Wait()
		conn.Close()
	}()
	sem := make(chan struct{}, a.cfg.MaxWebSocketInFlight)
	for {
		mt, msg, err := conn.ReadMessage()
		if err != nil {
			if websocket.IsUnexpectedCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) {
				a.log.Debug("websocket closed", slog.Any("error", err))
			}
			return
		}
		if mt != websocket.TextMessage {
			c.sendError(nil, openai.Err(openai.TypeInvalidRequest, "invalid_message", "send each request as one text message"))
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			c.sendError(requestID(msg), openai.Err(openai.TypeRateLimit, "too_many_in_flight",
				"too many requests in flight on this connection: "+strconv.Itoa(a.cfg.MaxWebSocketInFlight)))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.serve(ctx, msg)
		}()
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

// requestID finds the raw request_id of a message, best effort.
func requestID(msg []byte) []byte {
	obj, err := openai.Parse(msg)
	if err != nil {
		return nil
	}
	id, _ := obj.Get("request_id")
	return id
}

func (c *wsConn) serve(ctx context.Context, msg []byte) {
	start := time.Now()
	obj, err := openai.Parse(msg)
	if err != nil {
		c.sendError(nil, openai.Err(openai.TypeInvalidRequest, "invalid_json", err.Error()))
		return
	}
	id, ok := obj.Get("request_id")
	if !ok {
		id = strconv.AppendQuote(nil, "ws-"+strconv.FormatUint(c.ids.Add(1), 10))
	}
	rt, f := c.a.route(obj, c.path, c.tag)
	if f != nil {
		c.sendError(id, f.err)
		return
	}
	defer rt.done()
	if ok { // request_id is ours, not the engine's
		if o, err := openai.Parse(rt.body); err == nil {
			rt.body = o.Delete("request_id")
		}
	}
	up, f := c.a.dispatch(ctx, rt, c.path, c.hdr)
	if f != nil {
		if f.status != 499 {
			c.sendError(id, f.err)
		}
		c.a.observe(rt, f.status, start)
		return
	}
	defer up.close()
	c.a.observe(rt, up.resp.StatusCode, start)
	if up.resp.StatusCode >= 400 {
		body, _ := io.ReadAll(io.LimitReader(up.resp.Body, 1<<20))
		c.sendError(id, upstreamError(up.resp.StatusCode, body))
		return
	}
	if !isEventStream(up.resp.Header) {
		body, err := io.ReadAll(io.LimitReader(up.resp.Body, c.a.cfg.MaxBodyBytes*4))
		if err != nil {
			c.sendError(id, openai.Err(openai.TypeServer, "upstream_failed", "the model replica failed mid-response: "+err.Error()))
			return
		}
		if c.send(withRequestID(id, bytes.TrimSpace(body))) == nil {
			c.sendDone(id)
		}
		return
	}
	var split openai.EventSplitter
	var stop error
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		n, err := up.resp.Body.Read(*bp)
		if ferr := split.Feed((*bp)[:n], func(ev []byte) error {
			data, ok := openai.EventData(ev)
			if !ok || bytes.Equal(data, openai.DoneData) {
				return nil
			}
			if o, perr := openai.Parse(data); perr == nil {
				if e, has := o.Get("error"); has {
					c.sendRaw(id, "error", e)
					return io.EOF
				}
			}
			return c.send(withRequestID(id, data))
		}); ferr != nil {
			stop = ferr
		}
		if stop != nil {
			return // error already sent, or the connection is gone
		}
		if err == io.EOF {
			c.sendDone(id)
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				c.sendError(id, openai.Err(openai.TypeServer, "upstream_failed", "the model replica failed while streaming: "+err.Error()))
			}
			return
		}
	}
}

// upstreamError extracts an OpenAI error from an engine's error body.
func upstreamError(status int, body []byte) openai.Error {
	var env openai.Envelope
	if json.Unmarshal(body, &env) == nil && env.Error.Message != "" {
		return env.Error
	}
	return openai.Err(openai.TypeServer, "upstream_error", http.StatusText(status)+": "+string(bytes.TrimSpace(body)))
}

// withRequestID inserts "request_id" as the first member of a JSON object.
func withRequestID(id, obj []byte) []byte {
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
