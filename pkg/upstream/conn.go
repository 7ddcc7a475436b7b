package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/rawconn"
)

// ErrCallerGone is returned by Conn.Wait when its Watcher reports that the
// caller (the client the request is made for) went away.
var ErrCallerGone = errors.New("upstream: the caller went away")

// Watcher tells a Conn.Wait whether to go on waiting.
type Watcher interface {
	// Gone reports whether the caller went away. The pool's Watchdog
	// calls it, from its own goroutine, about every interval while a Wait
	// waits (once the Wait waited one), never after the Wait returned;
	// it must not block.
	Gone() bool
}

// Pool keeps idle keep-alive connections to one upstream address, for
// callers that write requests and read responses themselves (with
// fasthttp's wire types, say) on their own goroutine. It is safe for
// concurrent use. Plain TCP connections read and write with raw system
// calls (rawconn.Wrap); TLS ones as crypto/tls does.
type Pool struct {
	addr        string
	tls         *tls.Config // nil: plain TCP
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration
	bufSize     int
	dog         *Watchdog

	// writers are the buffered writers of requests being written: a
	// connection holds one only from Writer to Flush, so that thousands of
	// connections waiting on long answers hold no write buffer.
	writers sync.Pool

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
	bw       *bufio.Writer // between Writer and Flush; nil otherwise
	lastUsed time.Time
	reused   bool
	// readDeadline is the read deadline Wait set last, which it does not
	// set again (each set touches the runtime's timers).
	readDeadline    time.Time
	readDeadlineSet bool
	watch           Watch // Wait's, under the pool's watchdog
}

// NewPool returns an empty pool of connections to addr (host:port). With a
// non-nil tlsConfig the connections use TLS. The Watchers of its
// connections' Waits are asked by dog; a nil dog is a watchdog of the
// pool's own that asks every DefaultWatchInterval. (Pools of one process
// share one, and so one goroutine.)
func NewPool(addr string, tlsConfig *tls.Config, dog *Watchdog) *Pool {
	if dog == nil {
		dog = NewWatchdog(DefaultWatchInterval)
	}
	return &Pool{
		dog:         dog,
		addr:        addr,
		tls:         tlsConfig,
		dialer:      net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     1024,
		idleTimeout: 50 * time.Second, // below the servers' usual idle timeouts
		bufSize:     8 << 10,          // a response head must fit in the reader (fasthttp parses it there)
	}
}

// Get returns an idle connection, or dials a new one (errors are
// DialError). Its write deadline is set to deadline (zero: none); reads get
// theirs from Wait.
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
		if err := c.nc.SetWriteDeadline(deadline); err != nil {
			_ = c.nc.Close()
			return nil, DialError{err}
		}
		return c, nil
	}
	nc, err := p.dial(deadline)
	if err != nil {
		return nil, DialError{err}
	}
	if err := nc.SetWriteDeadline(deadline); err != nil {
		_ = nc.Close()
		return nil, DialError{err}
	}
	return &Conn{pool: p, nc: nc, br: bufio.NewReaderSize(nc, p.bufSize)}, nil
}

func (p *Pool) dial(deadline time.Time) (net.Conn, error) {
	ctx := context.Background()
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	if p.tls == nil {
		nc, err := p.dialer.DialContext(ctx, "tcp", p.addr)
		if err != nil {
			return nil, err
		}
		return rawconn.Wrap(nc), nil
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

// Writer is a buffered writer on the connection, taken from the pool's
// writers until Flush: write a request with it, then Flush to send it.
func (c *Conn) Writer() *bufio.Writer {
	if c.bw == nil {
		if w, ok := c.pool.writers.Get().(*bufio.Writer); ok {
			w.Reset(c.nc)
			c.bw = w
		} else {
			c.bw = bufio.NewWriterSize(c.nc, c.pool.bufSize)
		}
	}
	return c.bw
}

// Flush sends what was written with Writer and gives the writer back.
func (c *Conn) Flush() error {
	w := c.bw
	if w == nil {
		return nil
	}
	err := w.Flush()
	c.bw = nil
	w.Reset(nil)
	c.pool.writers.Put(w)
	return err
}

// Reused reports whether the connection served an earlier request (and so
// may have been closed by the upstream while idle).
func (c *Conn) Reused() bool { return c.reused }

// Wait blocks until a byte from the upstream can be read without blocking,
// the deadline passes (a timeout error), or the connection fails. With a
// Watcher, the pool's Watchdog asks it every interval while Wait waits, and
// closes the connection when it reports the caller gone: Wait then returns
// ErrCallerGone, after which the connection must be closed (closing it is
// what cancels the request upstream; the watchdog did already). The wait
// itself sleeps in the poller, with no timer or goroutine of its own. The
// read deadline is deadline when Wait returns.
func (c *Conn) Wait(deadline time.Time, w Watcher) error {
	if c.br.Buffered() > 0 {
		return nil
	}
	if !c.readDeadlineSet || !deadline.Equal(c.readDeadline) {
		if err := c.nc.SetReadDeadline(deadline); err != nil {
			return err
		}
		c.readDeadline, c.readDeadlineSet = deadline, true
	}
	if w == nil {
		_, err := c.br.Peek(1)
		return err
	}
	d := c.pool.dog
	d.Start(&c.watch, w, c.nc)
	_, err := c.br.Peek(1)
	if d.Stop(&c.watch) {
		return ErrCallerGone
	}
	return err
}

// Release gives the connection back to its pool for another request. The
// caller must have read the whole response: what is left unread would be
// taken for the next response. Its deadlines stay: nothing uses an idle
// connection, and Get and Wait set new ones.
func (c *Conn) Release() {
	if c.br.Buffered() > 0 || c.bw != nil {
		c.Close()
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

// Abort closes the connection's socket, which cancels its request
// upstream. Unlike Close it may be called from any goroutine (a context's
// AfterFunc, say) while the owner still uses the connection: the owner's
// next write or read fails, and the owner then Closes it.
func (c *Conn) Abort() { _ = c.nc.Close() }

// Close closes the connection, which cancels its request upstream. Only
// the connection's user calls it (see Abort).
func (c *Conn) Close() {
	_ = c.nc.Close()
	c.dropWriter()
}

// dropWriter gives back a writer whose request was never flushed.
func (c *Conn) dropWriter() {
	if w := c.bw; w != nil {
		c.bw = nil
		w.Reset(nil)
		c.pool.writers.Put(w)
	}
}

// IsClosedIdle reports whether err, from writing a request on a reused
// connection or waiting for its first response byte, is the mark of a
// connection the upstream closed while it was idle: the request surely did
// not reach the upstream, and may be sent again on a new connection.
func IsClosedIdle(err error) bool { return isClosedIdle(err) }
