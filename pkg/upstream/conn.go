package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// ErrCallerGone is returned by Conn.Wait when its Watcher reports that the
// caller (the client the request is made for) went away.
var ErrCallerGone = errors.New("upstream: the caller went away")

// Watcher tells Conn.Wait whether to go on waiting.
type Watcher interface {
	// Gone reports whether the caller went away; it is called about every
	// check interval while nothing arrives, and must not block.
	Gone() bool
}

// Pool keeps idle keep-alive connections to one upstream address, for
// callers that write requests and read responses themselves (with
// fasthttp's wire types, say) on their own goroutine. It is safe for
// concurrent use.
type Pool struct {
	addr        string
	tls         *tls.Config // nil: plain TCP
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration
	bufSize     int

	mu   sync.Mutex
	idle []*Conn // most recently used last
}

// Conn is one connection to the upstream, taken from a Pool. It is used by
// one goroutine at a time; give it back with Release once a response was
// read to its end, or Close it.
type Conn struct {
	pool     *Pool
	nc       net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	reused   bool
}

// NewPool returns an empty pool of connections to addr (host:port). With a
// non-nil tlsConfig the connections use TLS.
func NewPool(addr string, tlsConfig *tls.Config) *Pool {
	return &Pool{
		addr:        addr,
		tls:         tlsConfig,
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     1024,
		idleTimeout: 50 * time.Second, // below the servers' usual idle timeouts
		bufSize:     16 << 10,
	}
}

// Addr is the upstream address.
func (p *Pool) Addr() string { return p.addr }

// Get returns an idle connection, or dials a new one (errors are
// DialError). Its deadline is set to deadline (zero: none).
func (p *Pool) Get(deadline time.Time) (*Conn, error) {
	now := time.Now()
	var stale []*Conn
	var c *Conn
	p.mu.Lock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		ic := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		if now.Sub(ic.lastUsed) < p.idleTimeout {
			c = ic
			break
		}
		stale = append(stale, ic)
	}
	p.mu.Unlock()
	for _, sc := range stale {
		_ = sc.nc.Close()
	}
	if c != nil {
		c.reused = true
		if err := c.nc.SetDeadline(deadline); err != nil {
			_ = c.nc.Close()
			return nil, DialError{err}
		}
		return c, nil
	}
	nc, err := p.dial(deadline)
	if err != nil {
		return nil, DialError{err}
	}
	if err := nc.SetDeadline(deadline); err != nil {
		_ = nc.Close()
		return nil, DialError{err}
	}
	return &Conn{pool: p, nc: nc, br: bufio.NewReaderSize(nc, p.bufSize), bw: bufio.NewWriterSize(nc, p.bufSize)}, nil
}

func (p *Pool) dial(deadline time.Time) (net.Conn, error) {
	ctx := context.Background()
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if p.tls == nil {
		return p.dialer.DialContext(ctx, "tcp", p.addr)
	}
	d := tls.Dialer{NetDialer: &p.dialer, Config: p.tls}
	return d.DialContext(ctx, "tcp", p.addr)
}

// CloseIdle closes every idle connection.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.nc.Close()
	}
}

// Reader is the connection's buffered reader.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// Writer is the connection's buffered writer; flush it to send.
func (c *Conn) Writer() *bufio.Writer { return c.bw }

// Reused reports whether the connection served an earlier request (and so
// may have been closed by the upstream while idle).
func (c *Conn) Reused() bool { return c.reused }

// SetReadDeadline sets the connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// Wait blocks until a byte from the upstream can be read without blocking,
// the deadline passes (a timeout error), the connection fails, or w reports
// the caller gone (ErrCallerGone, after which the connection must be
// closed: closing it is what cancels the request upstream). While nothing
// arrives it asks w every interval: the check runs on the caller's
// goroutine, between read deadlines, with no goroutine or timer of its own.
// The read deadline is deadline again when Wait returns.
func (c *Conn) Wait(deadline time.Time, interval time.Duration, w Watcher) error {
	if c.br.Buffered() > 0 {
		return nil
	}
	for {
		next := time.Now().Add(interval)
		if !deadline.IsZero() && next.After(deadline) {
			next = deadline
		}
		if err := c.nc.SetReadDeadline(next); err != nil {
			return err
		}
		_, err := c.br.Peek(1)
		if err == nil {
			return c.nc.SetReadDeadline(deadline)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return err // the caller's deadline, not a check's
		}
		if w != nil && w.Gone() {
			return ErrCallerGone
		}
	}
}

// Release gives the connection back to its pool for another request. The
// caller must have read the whole response: what is left unread would be
// taken for the next response.
func (c *Conn) Release() {
	if c.br.Buffered() > 0 || c.nc.SetDeadline(time.Time{}) != nil {
		_ = c.nc.Close()
		return
	}
	c.lastUsed = time.Now()
	p := c.pool
	p.mu.Lock()
	if len(p.idle) < p.maxIdle {
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		_ = c.nc.Close()
	}
}

// Close closes the connection, which cancels its request upstream.
func (c *Conn) Close() { _ = c.nc.Close() }

// IsClosedIdle reports whether err, from writing a request on a reused
// connection or waiting for its first response byte, is the mark of a
// connection the upstream closed while it was idle: the request surely did
// not reach the upstream, and may be sent again on a new connection.
func IsClosedIdle(err error) bool { return isClosedIdle(err) }
