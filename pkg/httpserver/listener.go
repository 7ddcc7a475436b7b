package httpserver

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/rawconn"
)

// AdminMaxConnections caps the connections of an admin listener
// (ServeAdmin): operators and scrapers need a few.
const AdminMaxConnections = 64

// AdminWriteTimeout bounds an admin response, from the end of its request's
// headers (pprof adds a profile's ?seconds= to it, which AdminMux caps).
const AdminWriteTimeout = 2 * time.Minute

// New returns a server for an admin listener's h, with the limits' timeouts
// and header size: a whole request must arrive within the header and body
// read timeouts, a response within AdminWriteTimeout. Serve it with
// ServeAdmin.
func New(h http.Handler, l Limits, log *slog.Logger) *http.Server {
	srv := &http.Server{
		Handler:           closeChunked(h),
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		ReadTimeout:       l.ReadHeaderTimeout + l.BodyReadTimeout,
		WriteTimeout:      AdminWriteTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
	}
	if log != nil {
		srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	}
	return srv
}

// ServeAdmin serves srv (from New) on ln with at most AdminMaxConnections
// connections open (one more is answered 503 and closed), until srv is
// closed.
func ServeAdmin(srv *http.Server, ln net.Listener) error {
	return srv.Serve(Listen(ln, AdminMaxConnections))
}

// closeChunked closes the connection after answering a request with a
// chunked body. net/http takes the chunked framing when a request also has
// a Content-Length, and keeps the connection: a proxy in front that framed
// by the Content-Length would see what follows as another request (request
// smuggling). RFC 9112 6.1 has the server close such a connection; a
// request whose Content-Length net/http already dropped cannot be told
// apart, so every chunked request closes its connection. Clients of the
// OpenAI API send a Content-Length.
func closeChunked(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// rejectWorkers bounds the connections past the cap being answered at once;
// past that they are closed without an answer.
const rejectWorkers = 64

// Listen wraps ln so that at most max connections are open at once. A
// connection past the cap is answered 503 with Retry-After and closed,
// never queued: the client learns at once that it should come back.
// Accepted connections read and write with raw system calls
// (rawconn.Wrap).
func Listen(ln net.Listener, max int) net.Listener {
	return &capListener{Listener: ln, open: make(chan struct{}, max), rejecting: make(chan struct{}, rejectWorkers),
		overloaded: overloadedResponse()}
}

type capListener struct {
	net.Listener
	open       chan struct{} // one token per open connection
	rejecting  chan struct{} // one token per connection being turned away
	overloaded []byte

	mu    sync.Mutex
	conns map[*cappedConn]struct{} // the accepted connections still open

	closeOnce sync.Once
	closeErr  error
}

// Close closes the listener once; later calls return the first's result
// (the server's Shutdown and fasthttp's both close it).
func (l *capListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.open <- struct{}{}:
			cc := &cappedConn{Conn: rawconn.Wrap(c)}
			cc.release = func() { l.forget(cc) }
			l.mu.Lock()
			if l.conns == nil {
				l.conns = make(map[*cappedConn]struct{})
			}
			l.conns[cc] = struct{}{}
			l.mu.Unlock()
			return cc, nil
		default:
			l.reject(c)
		}
	}
}

// forget gives a closed connection's place back.
func (l *capListener) forget(c *cappedConn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	<-l.open
}

// closeConns closes every accepted connection still open (the server's own
// Close, for servers that have none that cuts active connections).
func (l *capListener) closeConns() {
	l.mu.Lock()
	conns := make([]*cappedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		// The socket only: the server's own Close of the connection, on
		// its goroutine once the handler returned, gives the place back
		// and ends a stream still waiting for its hijack (cappedConn.Close),
		// never this goroutine while a handler still runs.
		_ = c.Conn.Close()
	}
}

// reject answers a connection past the cap and closes it. The answer goes
// out before the request is read; the request is then drained briefly so
// that closing does not reset the connection before the client reads it.
func (l *capListener) reject(c net.Conn) {
	select {
	case l.rejecting <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-l.rejecting }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(l.overloaded); err != nil {
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		var sink [4 << 10]byte
		for {
			if _, err := c.Read(sink[:]); err != nil {
				return
			}
		}
	}()
}

func overloadedResponse() []byte {
	body := openai.Err(openai.TypeUnavailable, "too_many_connections",
		"the server has too many open connections; retry shortly").JSON()
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
}

// cappedConn gives its place back once, when closed.
type cappedConn struct {
	net.Conn
	once    sync.Once
	release func()
	// linger: the server answered a request it could not read (431, 408,
	// 400) and hangs up; Close first sends the answer's end and reads
	// what the client still sends, so the client reads the answer rather
	// than a reset (closing with unread bytes resets the connection).
	linger atomic.Bool
	// pending is a stream waiting for the hijack of the connection
	// (SetStream); Close before the hijack closes it.
	pending atomic.Pointer[pendingStream]
}

// Lingering close bounds: what is read, and for how long, before the
// close of a connection whose request was refused unread (as net/http
// waits 500 ms before it closes such a connection).
const (
	lingerTimeout = 500 * time.Millisecond
	lingerBytes   = 1 << 20
)

// CloseWrite half-closes a TCP connection, as net/http does before it hangs
// up on a client it refused (so that the client reads the refusal).
func (c *cappedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// NetConn returns the connection under the cap (for PeerClosed).
func (c *cappedConn) NetConn() net.Conn { return c.Conn }

func (c *cappedConn) Close() error {
	if c.linger.Swap(false) {
		_ = c.CloseWrite()
		_ = c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.CopyN(io.Discard, c.Conn, lingerBytes)
	}
	err := c.Conn.Close()
	c.once.Do(c.release)
	if p := c.pending.Swap(nil); p != nil {
		_ = p.s.CloseWithError(ErrStreamAbandoned)
	}
	return err
}
