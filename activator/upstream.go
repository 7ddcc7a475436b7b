package activator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// upstreamClient is a minimal HTTP/1.1 client for the hop to the
// queue-proxies. Unlike net/http's Transport, which hands every request to a
// write-loop and a read-loop goroutine, it writes the request and reads the
// response on the caller's goroutine: two fewer goroutine hand-offs per
// request, which is most of what a proxy hop costs on a small machine
// (docs/benchmarks.md). Connections are kept alive and pooled per address; a
// cancelled context closes the connection, which cancels the request
// upstream.
type upstreamClient struct {
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle map[string][]*pconn
}

type pconn struct {
	addr     string
	conn     net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
}

func newUpstreamClient() *upstreamClient {
	return &upstreamClient{
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     1024,
		idleTimeout: 50 * time.Second, // below the queue-proxy's idle timeout
		idle:        map[string][]*pconn{},
	}
}

// errNothingSent marks failures after which the request surely did not reach
// the server's handler (dial failures, a pooled connection found closed).
type errNothingSent struct{ err error }

func (e errNothingSent) Error() string { return e.err.Error() }
func (e errNothingSent) Unwrap() error { return e.err }

func (c *upstreamClient) get(ctx context.Context, addr string) (*pconn, bool, error) {
	now := time.Now()
	c.mu.Lock()
	for list := c.idle[addr]; len(list) > 0; list = c.idle[addr] {
		pc := list[len(list)-1]
		c.idle[addr] = list[:len(list)-1]
		if now.Sub(pc.lastUsed) < c.idleTimeout {
			c.mu.Unlock()
			return pc, true, nil
		}
		pc.conn.Close()
	}
	c.mu.Unlock()
	conn, err := c.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, errNothingSent{err}
	}
	return &pconn{addr: addr, conn: conn, br: bufio.NewReaderSize(conn, 16<<10), bw: bufio.NewWriterSize(conn, 16<<10)}, false, nil
}

func (c *upstreamClient) put(pc *pconn) {
	pc.lastUsed = time.Now()
	c.mu.Lock()
	if len(c.idle[pc.addr]) < c.maxIdle {
		c.idle[pc.addr] = append(c.idle[pc.addr], pc)
		pc = nil
	}
	c.mu.Unlock()
	if pc != nil {
		pc.conn.Close()
	}
}

// closeIdle closes every pooled connection to addr (a replica went away).
func (c *upstreamClient) closeIdle(addr string) {
	c.mu.Lock()
	list := c.idle[addr]
	delete(c.idle, addr)
	c.mu.Unlock()
	for _, pc := range list {
		pc.conn.Close()
	}
}

// post sends a POST and returns the response with its headers read. The
// response body must be closed; a body read to its end returns the connection
// to the pool.
//
// timeout bounds the whole exchange, body included, through the connection's
// deadline (no per-request timer or context).
func (c *upstreamClient) post(ctx context.Context, addr, path string, hdr http.Header, body []byte, timeout time.Duration) (*http.Response, error) {
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		pc, reused, err := c.get(ctx, addr)
		if err != nil {
			return nil, err
		}
		_ = pc.conn.SetDeadline(deadline)
		resp, err := c.roundTrip(ctx, pc, path, hdr, body)
		if err == nil {
			return resp, nil
		}
		// A pooled connection the server closed while idle fails at once,
		// before the server saw anything: try once more on a new one.
		if reused && attempt == 0 && ctx.Err() == nil && isClosedIdle(err) {
			continue
		}
		return nil, err
	}
}

func isClosedIdle(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *upstreamClient) roundTrip(ctx context.Context, pc *pconn, path string, hdr http.Header, body []byte) (*http.Response, error) {
	stop := context.AfterFunc(ctx, func() { pc.conn.Close() })
	fail := func(err error) (*http.Response, error) {
		stop()
		pc.conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	bw := pc.bw
	bw.WriteString("POST ")
	bw.WriteString(path)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(pc.addr)
	bw.WriteString("\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n")
	writeForwardHeaders(bw, hdr)
	bw.WriteString("\r\n")
	bw.Write(body)
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(pc.br, nil)
	if err != nil {
		return fail(err)
	}
	resp.Body = &upstreamBody{rc: resp.Body, pc: pc, client: c, stop: stop, keep: !resp.Close}
	return resp, nil
}

// upstreamBody returns its connection to the pool when read to the end.
type upstreamBody struct {
	rc     io.ReadCloser
	pc     *pconn
	client *upstreamClient
	stop   func() bool
	keep   bool
	eof    bool
	done   bool
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, fmt.Errorf("read on closed upstream body")
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *upstreamBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// stop reports false when the context was cancelled and the connection
	// is being closed: then it cannot be reused.
	if b.stop() && b.eof && b.keep && b.pc.br.Buffered() == 0 && b.pc.conn.SetDeadline(time.Time{}) == nil {
		b.client.put(b.pc)
		return nil
	}
	return b.pc.conn.Close()
}

// skipHeaders are not forwarded: hop-by-hop (RFC 9110 7.6.1) and those the
// client sets itself.
var skipHeaders = map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Connection": true,
	"Proxy-Authenticate": true, "Proxy-Authorization": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Content-Length": true, "Host": true}

// writeForwardHeaders writes the end-to-end headers of hdr in wire format.
func writeForwardHeaders(bw *bufio.Writer, hdr http.Header) {
	conn := hdr["Connection"]
	for k, vv := range hdr {
		if skipHeaders[k] || (len(conn) > 0 && listsToken(conn, k)) {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// listsToken reports whether a Connection header names the header k.
func listsToken(values []string, k string) bool {
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), k) {
				return true
			}
		}
	}
	return false
}
