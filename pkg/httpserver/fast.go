package httpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Errors the fasthttp server answers on its own, before a handler runs.
var (
	ErrHeadersTooLarge = openai.Err(openai.TypeInvalidRequest, "request_header_too_large",
		"the request line and headers exceed the header size limit")
	ErrReadTimeout = openai.Err(openai.TypeTimeout, "request_read_timeout",
		"the request headers did not arrive within the header read timeout")
	ErrMalformedRequest = openai.Err(openai.TypeInvalidRequest, "malformed_request",
		"the request is not valid HTTP/1.1")
)

// FastServer serves a fasthttp handler on listeners capped at
// Limits.MaxConnections (see Listen), with the limits' timeouts and header
// size. It is the public listener of the queue-proxy.
//
// What it does with hostile input (docs/security.md): headers that take
// longer than ReadHeaderTimeout from their first byte (and the first byte
// of a body, which fasthttp reads with the headers) end the connection
// with a 408; headers over MaxHeaderBytes are answered 431 (the read
// buffer is MaxHeaderBytes long, and a header must fit in it); a request
// fasthttp cannot parse (duplicated or malformed Content-Length,
// unsupported Transfer-Encoding, bad chunk framing before the handler) is
// answered 400 and its connection closed; a request with a chunked body has
// its connection closed after the answer (closeChunkedFast); bodies are
// streamed to the handler, which reads them within BodyReadTimeout
// (BodyReader.ReadRequest).
type FastServer struct {
	srv    *fasthttp.Server
	limits Limits

	mu     sync.Mutex
	lns    []*capListener
	closed bool // Shutdown or Close was called: a later Serve returns at once
}

// maxPrefetch is what fasthttp reads of a body before the handler runs:
// one byte. fasthttp reads min(MaxRequestBodySize, Content-Length, 8 KiB)
// with the headers and hands the rest to the handler as a stream when the
// body is larger, so a limit of one byte makes every body a stream that the
// handler reads within its own limits (size, budget, body timeout), and
// keeps what fasthttp reads under the header timeout to one byte.
const maxPrefetch = 1

// NewFast returns a server for h with the limits. A nil logger discards.
func NewFast(h fasthttp.RequestHandler, l Limits, log *slog.Logger) *FastServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &FastServer{limits: l}
	s.srv = &fasthttp.Server{
		Handler:                      closeChunkedFast(h),
		ErrorHandler:                 answerReadError,
		ReadTimeout:                  l.ReadHeaderTimeout,
		WriteTimeout:                 l.WriteTimeout,
		IdleTimeout:                  l.IdleTimeout,
		ReadBufferSize:               l.MaxHeaderBytes,
		Concurrency:                  l.MaxConnections,
		MaxRequestBodySize:           maxPrefetch,
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		CloseOnShutdown:              true,
		SecureErrorLogMessage:        true,
		Logger:                       fastLogger{log},
	}
	return s
}

// fastLogger sends fasthttp's own log lines to slog at debug level.
type fastLogger struct{ log *slog.Logger }

func (l fastLogger) Printf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("fasthttp", slog.String("msg", fmt.Sprintf(format, args...)))
	}
}

// closeChunkedFast closes the connection after answering a request with a
// chunked body, as closeChunked does for net/http: fasthttp, like Go, takes
// the chunked framing of a request that also has a Content-Length, and a
// proxy in front that framed it by that length could otherwise pass a
// second, smuggled request (RFC 9112 6.1). (Two Content-Lengths, even
// equal, are a 400 from fasthttp's parser.)
func closeChunkedFast(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if ctx.Request.Header.ContentLength() == -1 {
			ctx.Response.SetConnectionClose()
		}
		h(ctx)
	}
}

// answerReadError answers a request fasthttp could not read; the server
// closes the connection after it.
func answerReadError(ctx *fasthttp.RequestCtx, err error) {
	if c, ok := ctx.Conn().(*cappedConn); ok {
		c.linger.Store(true) // the client reads the answer, not a reset
	}
	var ne net.Error
	switch {
	case errors.As(err, new(*fasthttp.ErrSmallBuffer)):
		WriteError(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, ErrHeadersTooLarge, 0)
	case errors.As(err, &ne) && ne.Timeout():
		WriteError(ctx, fasthttp.StatusRequestTimeout, ErrReadTimeout, 0)
	default:
		WriteError(ctx, fasthttp.StatusBadRequest, ErrMalformedRequest, 0)
	}
}

// Serve accepts connections on ln, at most Limits.MaxConnections at once
// (one more is answered 503 and closed), until Shutdown or Close, and then
// returns nil. Called after either, it closes ln and returns
// http.ErrServerClosed at once: a Serve that starts late (its goroutine ran
// after the stop) does not serve forever.
func (s *FastServer) Serve(ln net.Listener) error {
	cl := Listen(ln, s.limits.MaxConnections).(*capListener)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = cl.Close()
		return http.ErrServerClosed
	}
	s.lns = append(s.lns, cl)
	s.mu.Unlock()
	return s.srv.Serve(cl) // nil once its listener is closed
}

// Shutdown stops accepting, closes idle connections and waits for the
// others to finish their requests (and streams), or for ctx to end. It
// closes the listeners itself first: fasthttp's Shutdown returns at once,
// leaving them open, when it runs before its Serve has taken one, and that
// Serve would then accept forever (fasthttp's own close of a listener
// afterwards returns this one's result).
func (s *FastServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	lns := s.lns
	s.mu.Unlock()
	for _, l := range lns {
		_ = l.Close()
	}
	return s.srv.ShutdownWithContext(ctx)
}

// Close closes the listeners and every connection, active or not: requests
// in progress see their client gone (and cancel their upstream work).
func (s *FastServer) Close() error {
	s.mu.Lock()
	s.closed = true
	lns := s.lns
	s.mu.Unlock()
	var errs []error
	for _, l := range lns {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
		l.closeConns()
	}
	return errors.Join(errs...)
}

// WriteError answers ctx with an OpenAI-shaped error, as openai.WriteError
// does for net/http.
func WriteError(ctx *fasthttp.RequestCtx, status int, e openai.Error, retryAfter time.Duration) {
	ctx.Response.SetStatusCode(status)
	ctx.Response.Header.SetContentType("application/json")
	if retryAfter > 0 {
		secs := int((retryAfter + time.Second - 1) / time.Second)
		ctx.Response.Header.Set("Retry-After", strconv.Itoa(secs))
	}
	ctx.Response.SetBodyRaw(e.JSON())
}

// Respond answers a body failure on a fasthttp request. A body not read to
// its end leaves the connection in an unknown state: it is closed after the
// answer.
func (f *Failure) Respond(ctx *fasthttp.RequestCtx) {
	if f.Status == fasthttp.StatusRequestTimeout || f.Status == fasthttp.StatusServiceUnavailable {
		ctx.Response.SetConnectionClose()
	}
	WriteError(ctx, f.Status, f.Err, f.RetryAfter)
}

// WriteArmer moves a connection's write deadline forward as a response is
// written, as ClientWriter does for net/http: each write must make
// progress within the timeout, while a client that merely waits between
// writes (an engine thinking between tokens) is never cut off. The zero
// value arms nothing.
type WriteArmer struct {
	conn    net.Conn
	timeout time.Duration
	armed   time.Time
}

// Reset makes the armer arm c's write deadline at timeout (0: none).
func (a *WriteArmer) Reset(c net.Conn, timeout time.Duration) {
	*a = WriteArmer{conn: c, timeout: timeout}
}

// Arm moves the deadline to a timeout from now, at most every quarter of
// the timeout: a write that blocks fails after 3/4 to 4/4 of it. Call it
// before each write.
func (a *WriteArmer) Arm() {
	if a.timeout <= 0 || a.conn == nil {
		return
	}
	if now := time.Now(); now.Sub(a.armed) > a.timeout/4 {
		if a.conn.SetWriteDeadline(now.Add(a.timeout)) == nil {
			a.armed = now
		}
	}
}
