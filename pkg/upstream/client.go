package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Client is a minimal HTTP/1.1 client; see the package doc. It is safe for
// concurrent use.
type Client struct {
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

// New returns a client with an empty pool.
func New() *Client {
	return &Client{
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     1024,
		idleTimeout: 50 * time.Second, // below the queue-proxy's idle timeout
		idle:        map[string][]*pconn{},
	}
}

// DialError is a failure to connect: the request surely did not reach the
// server.
type DialError struct{ Err error }

func (e DialError) Error() string { return e.Err.Error() }
func (e DialError) Unwrap() error { return e.Err }

func (c *Client) get(ctx context.Context, addr string) (*pconn, bool, error) {
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
		return nil, false, DialError{err}
	}
	return &pconn{addr: addr, conn: conn, br: bufio.NewReaderSize(conn, 8<<10), bw: bufio.NewWriterSize(conn, 8<<10)}, false, nil
}

func (c *Client) put(pc *pconn) {
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

// CloseIdle closes every pooled connection to addr (a replica went away).
func (c *Client) CloseIdle(addr string) {
	c.mu.Lock()
	list := c.idle[addr]
	delete(c.idle, addr)
	c.mu.Unlock()
	for _, pc := range list {
		pc.conn.Close()
	}
}

// Request is one request to send.
type Request struct {
	Method string // default POST
	Addr   string // host:port
	// URI is the request target: path and query, already escaped.
	URI    string
	Header http.Header // end-to-end headers; hop-by-hop ones are dropped
	// ContentType, when set, replaces the Content-Type of Header.
	ContentType string
	Body        []byte
	// Timeout bounds the whole exchange, body included, through the
	// connection's deadline; 0 = none.
	Timeout time.Duration
}

// PostJSON sends a POST of a JSON body; see Do.
func (c *Client) PostJSON(ctx context.Context, addr, uri string, hdr http.Header, body []byte, timeout time.Duration) (*http.Response, error) {
	return c.Do(ctx, Request{Addr: addr, URI: uri, Header: hdr, ContentType: "application/json", Body: body, Timeout: timeout})
}

// Do sends a request and returns the response with its headers read. The
// response body must be closed; a body read to its end returns the
// connection to the pool. Errors wrap DialError when nothing was sent, and
// are the context's error when ctx ended first.
func (c *Client) Do(ctx context.Context, req Request) (*http.Response, error) {
	var deadline time.Time
	if req.Timeout > 0 {
		deadline = time.Now().Add(req.Timeout)
	}
	addr := req.Addr
	for attempt := 0; ; attempt++ {
		pc, reused, err := c.get(ctx, addr)
		if err != nil {
			return nil, err
		}
		_ = pc.conn.SetDeadline(deadline)
		resp, err := c.roundTrip(ctx, pc, &req)
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

func (c *Client) roundTrip(ctx context.Context, pc *pconn, req *Request) (*http.Response, error) {
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
	method := req.Method
	if method == "" {
		method = http.MethodPost
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(req.URI)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(pc.addr)
	bw.WriteString("\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(req.Body)))
	bw.WriteString("\r\n")
	if req.ContentType != "" {
		bw.WriteString("Content-Type: ")
		bw.WriteString(req.ContentType)
		bw.WriteString("\r\n")
	}
	writeForwardHeaders(bw, req.Header, req.ContentType != "")
	bw.WriteString("\r\n")
	bw.Write(req.Body)
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	resp, err := readFinalResponse(pc.br, method)
	if err != nil {
		return fail(err)
	}
	resp.Body = &body{rc: resp.Body, pc: pc, client: c, stop: stop, keep: !resp.Close}
	return resp, nil
}

// maxInterim bounds the 1xx responses skipped before the final one: a
// server that sends interim responses forever is broken.
const maxInterim = 8

// readFinalResponse reads the final response of an exchange, skipping the
// interim 1xx responses a server may send first (RFC 9110 15.2: 100
// Continue, 103 Early Hints, ...). Taking an interim response for the final
// one would leave the real answer on the connection for the next request
// to read. 101 Switching Protocols is never asked for here: it is an error.
func readFinalResponse(br *bufio.Reader, method string) (*http.Response, error) {
	for range maxInterim {
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			return nil, err
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("upstream answered 101 Switching Protocols to a request that asked for no upgrade")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue // an interim response has no body: the final one follows
		}
		return resp, nil
	}
	return nil, fmt.Errorf("upstream sent more than %d interim (1xx) responses", maxInterim)
}

// body returns its connection to the pool when read to the end.
type body struct {
	rc     io.ReadCloser
	pc     *pconn
	client *Client
	stop   func() bool
	keep   bool
	eof    bool
	done   bool
}

func (b *body) Read(p []byte) (int, error) {
	if b.done {
		return 0, fmt.Errorf("read on closed upstream body")
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *body) Close() error {
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

// writeForwardHeaders writes the end-to-end headers of hdr in wire format.
// Content-Length and Host are written by the client itself. Expect is not
// forwarded: the whole body is sent at once, so there is nothing to wait
// for, and a forwarded "100-continue" would only draw an interim response.
func writeForwardHeaders(bw *bufio.Writer, hdr http.Header, skipContentType bool) {
	conn := hdr["Connection"]
	for k, vv := range hdr {
		if HopByHop(k, conn) || k == "Content-Length" || k == "Host" || k == "Expect" || (skipContentType && k == "Content-Type") {
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
