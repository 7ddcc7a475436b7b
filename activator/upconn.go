package activator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// The activator's client to the replicas' queue-proxies, for every request
// of the data path (the forwarded request, the prefill half of a
// disaggregated one, an engine tokenization): one upstream.Pool of
// keep-alive connections per address, the request written and the answer
// read with fasthttp's wire types on the request's own goroutine (no
// goroutine, no context watcher per request). While it waits for the first
// byte of an answer, and between the reads of its body, the pools' watchdog
// looks at its client every checkInterval (upstream.Conn.Wait with the
// call as Watcher): fasthttp's server gives no other sign of a client that
// left, and a client gone closes the connection to the queue-proxy, which
// cancels the engine's work.

// checkInterval is how often a request waiting on a replica, or in the
// revision's queue, checks whether its client is still there.
const checkInterval = 100 * time.Millisecond

// errUpgrade is the failure of a replica that switches protocols on a
// request that asked for no upgrade.
var errUpgrade = errors.New("upstream answered 101 Switching Protocols to a request that asked for no upgrade")

// errTooLarge is the failure of an answer read whole (readAll) that is
// longer than its bound.
var errTooLarge = errors.New("answer larger than its bound")

// pools are the connection pools to the replicas, by address. Their waits
// are watched by the activator's watchdog (New sets dog).
type pools struct {
	m   sync.Map // string -> *upstream.Pool
	dog *upstream.Watchdog
}

func (p *pools) get(addr string) *upstream.Pool {
	if v, ok := p.m.Load(addr); ok {
		return v.(*upstream.Pool)
	}
	v, _ := p.m.LoadOrStore(addr, upstream.NewPool(addr, nil, p.dog))
	return v.(*upstream.Pool)
}

// forget closes the idle connections to addr and forgets its pool (a
// replica went away); connections in use are closed when they end.
func (p *pools) forget(addr string) {
	if v, ok := p.m.LoadAndDelete(addr); ok {
		v.(*upstream.Pool).CloseIdle()
	}
}

// fwdHeader is what of a client's request headers goes to the replica:
// those of a fasthttp request (HTTP) or of an http.Header (a WebSocket's
// upgrade), end-to-end only, without the ones the client writes itself
// (Host, Content-Length, Content-Type), without Expect (the whole body is
// sent at once) and, when the activator authenticated the request, without
// its key headers, which engines must never see.
type fwdHeader struct {
	fast      *fasthttp.RequestHeader
	std       http.Header
	stripAuth bool
}

// write writes the headers in wire format; a nil h writes none (a request
// of the activator's own, such as a tokenization).
func (h *fwdHeader) write(bw *bufio.Writer) {
	if h == nil {
		return
	}
	if h.fast != nil {
		conn := h.fast.PeekAll("Connection")
		for k, v := range h.fast.All() {
			if h.skip(k, conn) {
				continue
			}
			_, _ = bw.Write(k)
			_, _ = bw.WriteString(": ")
			_, _ = bw.Write(v)
			_, _ = bw.WriteString("\r\n")
		}
		return
	}
	conn := h.std["Connection"]
	for k, vv := range h.std {
		if upstream.HopByHop(k, conn) || skipForward(k) || (h.stripAuth && isKeyHeader(k)) {
			continue
		}
		for _, v := range vv {
			_, _ = bw.WriteString(k)
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(v)
			_, _ = bw.WriteString("\r\n")
		}
	}
}

func (h *fwdHeader) skip(k []byte, conn [][]byte) bool {
	switch len(k) {
	case 4:
		if bytes.EqualFold(k, []byte("Host")) {
			return true
		}
	case 6:
		if bytes.EqualFold(k, []byte("Expect")) {
			return true
		}
	case 7:
		if h.stripAuth && bytes.EqualFold(k, []byte(APIKeyHeader)) {
			return true
		}
	case 12:
		if bytes.EqualFold(k, []byte("Content-Type")) {
			return true
		}
	case 13:
		if h.stripAuth && bytes.EqualFold(k, []byte("Authorization")) {
			return true
		}
	case 14:
		if bytes.EqualFold(k, []byte("Content-Length")) {
			return true
		}
	}
	return upstream.IsHopByHop(k, conn)
}

// skipForward names the headers of an http.Header the client writes itself
// or never forwards.
func skipForward(k string) bool {
	switch http.CanonicalHeaderKey(k) {
	case "Host", "Expect", "Content-Type", "Content-Length":
		return true
	}
	return false
}

func isKeyHeader(k string) bool {
	k = http.CanonicalHeaderKey(k)
	return k == "Authorization" || k == APIKeyHeader
}

// upResp is a replica's answer being read: its head, and its body as a
// stream. finish ends it.
type upResp struct {
	conn *upstream.Conn
	resp *fasthttp.Response
	// body is the answer's body stream (nil: none).
	body io.Reader
	// eof: the body was read to its end (or there is none), so the
	// connection may serve another request.
	eof bool
	// stop undoes the context watch of a WebSocket's request (nil for HTTP).
	stop     func() bool
	deadline time.Time
	watch    upstream.Watcher
}

// wait waits until the next bytes of the body can be read without blocking
// (or the answer failed, timed out, or its client left).
func (u *upResp) wait() error {
	if u.watch == nil {
		return nil // a WebSocket's: its context closes the connection
	}
	return u.conn.Wait(u.deadline, u.watch)
}

// Read reads the answer's body.
func (u *upResp) Read(p []byte) (int, error) {
	n, err := u.body.Read(p)
	if err == io.EOF {
		u.eof = true
	}
	return n, err
}

// waitingBody is an answer's body read whole: each read that may block
// waits first (wait), so that a client gone ends it, and a read after the
// end returns io.EOF at once.
type waitingBody upResp

func (b *waitingBody) Read(p []byte) (int, error) {
	u := (*upResp)(b)
	if u.eof {
		return 0, io.EOF
	}
	if err := u.wait(); err != nil {
		return 0, err
	}
	return u.Read(p)
}

// whole is the answer's body for a caller that reads it whole (a prefill's,
// a tokenization's): its reads look at the client while they wait.
func (u *upResp) whole() io.Reader { return (*waitingBody)(u) }

// readAll reads the answer's body whole, at most limit bytes of it: a
// longer body is errTooLarge, with its first limit bytes, and is not read
// to its end (finish closes the connection).
func (u *upResp) readAll(limit int) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(u.whole(), int64(limit)+1))
	if err == nil && len(data) > limit {
		return data[:limit], errTooLarge
	}
	return data, err
}

// finish gives the connection back to its pool when the answer was read to
// its end, or closes it, which cancels what the replica still does for it.
// eof is the caller's view; the body's own must agree.
func (u *upResp) finish(eof bool) {
	_ = u.resp.CloseBodyStream()
	stopped := u.stop == nil || u.stop()
	if eof && u.eof && stopped && !u.resp.ConnectionClose() {
		u.conn.Release()
	} else {
		u.conn.Close()
	}
	fasthttp.ReleaseResponse(u.resp)
	u.resp, u.conn, u.body = nil, nil, nil
}

// send sends a POST of a JSON body to the replica at addr, with the
// client's headers hdr (nil: none), and reads its answer's head; the
// exchange, body included, ends by deadline. It serves every request of
// the data path: the forwarded request, a prefill, a tokenization. A
// request with a Watcher (HTTP) looks at its client while it waits
// (upstream.ErrCallerGone when it left); one without (WebSocket) has its
// connection closed when ctx ends. A request whose ctx ended already is
// not sent. A pooled connection the replica closed while idle fails at
// once, before the replica saw anything: the request is sent once more on
// a new one. Errors are upstream.DialError when nothing was sent, a
// timeout past deadline, and ctx's error when it ended first.
func (a *Activator) send(ctx context.Context, addr, path string, hdr *fwdHeader, body []byte, deadline time.Time, watch upstream.Watcher) (*upResp, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // the client left (during a prefill, say)
	}
	pool := a.pools.get(addr)
	for attempt := 0; ; attempt++ {
		c, err := pool.Get(deadline)
		if err != nil {
			return nil, err
		}
		var stop func() bool
		if watch == nil {
			stop = context.AfterFunc(ctx, c.Abort) // Close is the owner's: it gives back the writer
		}
		fail := func(err error) error {
			if stop != nil {
				stop()
			}
			c.Close()
			if ctx.Err() != nil && watch == nil {
				return ctx.Err()
			}
			return err
		}
		writeRequest(c.Writer(), addr, path, hdr, body)
		err = c.Flush()
		if err == nil {
			err = c.Wait(deadline, watch)
		}
		if err != nil {
			err = fail(err)
			if attempt == 0 && c.Reused() && upstream.IsClosedIdle(err) {
				continue
			}
			return nil, err
		}
		resp := fasthttp.AcquireResponse()
		resp.StreamBody = true
		err = resp.ReadLimitBody(c.Reader(), 0)
		if err == nil && resp.StatusCode() == fasthttp.StatusSwitchingProtocols {
			err = errUpgrade
		}
		if err != nil {
			fasthttp.ReleaseResponse(resp)
			return nil, fail(err)
		}
		u := &upResp{conn: c, resp: resp, body: resp.BodyStream(), stop: stop, deadline: deadline, watch: watch}
		u.eof = u.body == nil
		return u, nil
	}
}

// writeRequest writes a POST of a JSON body.
func writeRequest(bw *bufio.Writer, addr, path string, hdr *fwdHeader, body []byte) {
	_, _ = bw.WriteString("POST ")
	_, _ = bw.WriteString(path)
	_, _ = bw.WriteString(" HTTP/1.1\r\nHost: ")
	_, _ = bw.WriteString(addr)
	_, _ = bw.WriteString("\r\nContent-Type: application/json\r\nContent-Length: ")
	_, _ = bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(body)), 10))
	_, _ = bw.WriteString("\r\n")
	hdr.write(bw)
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(body)
}
