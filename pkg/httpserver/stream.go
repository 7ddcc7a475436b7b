package httpserver

import (
	"bufio"
	"errors"
	"io"
	"net"

	"github.com/valyala/fasthttp"
)

// Stream is a response body that fasthttp writes after the handler
// returned, on the connection's goroutine: the relay of an upstream's
// answer. Embed StreamBody for the rest of fasthttp's body stream
// interfaces.
type Stream interface {
	io.Reader // never called: fasthttp writes a Stream with WriteTo
	// WriteTo writes the body to w until it ends. Each Write of a body of
	// unknown length goes out as one chunk, flushed.
	WriteTo(w io.Writer) (int64, error)
	// CloseWithError is told once, when the body is done with: err is why
	// the writing stopped (nil when WriteTo ended the body), or
	// ErrStreamAbandoned when the connection closed before it began.
	CloseWithError(err error) error
}

// ErrStreamAbandoned is what a Stream is closed with when its connection
// closed before the stream began (an HTTP/1.0 client that left before its
// connection was handed over).
var ErrStreamAbandoned = errors.New("httpserver: the connection closed before the stream began")

// errWriteToOnly is what a Stream's Read returns.
var errWriteToOnly = errors.New("httpserver: a stream is written with WriteTo, not read")

// StreamBody completes a Stream for fasthttp: it is written with WriteTo.
type StreamBody struct{}

// SupportsBodyWriteTo tells fasthttp to write the stream with WriteTo.
func (StreamBody) SupportsBodyWriteTo() bool { return true }

// Read is never used: fasthttp writes a stream with WriteTo.
func (StreamBody) Read([]byte) (int, error) { return 0, errWriteToOnly }

// SetStream answers ctx with s as its body, length bytes long (-1:
// unknown). To an HTTP/1.1 client a body of unknown length goes in chunks.
// An HTTP/1.0 client cannot read chunks: the connection is hijacked, the
// body written unframed as it comes, and the connection closed at its end
// (on the goroutine fasthttp starts for a hijack, armer's write timeout
// applying); if the server closes that connection before it hands it over
// (the client left meanwhile), s is closed with ErrStreamAbandoned. That
// last needs a connection FastServer accepted (its own conn type notices
// the close); on another server such a stream would never be closed.
func SetStream(ctx *fasthttp.RequestCtx, s Stream, length int, armer *WriteArmer) {
	if length >= 0 || ctx.Request.Header.IsHTTP11() {
		ctx.Response.SetBodyStream(s, length)
		return
	}
	ctx.Response.Header.SetContentLength(-2) // no framing: the body ends with the connection
	head := ctx.Response.Header.AppendBytes(nil)
	ctx.HijackSetNoResponse(true)
	cc, _ := ctx.Conn().(*cappedConn)
	if cc != nil {
		cc.pending.Store(&pendingStream{s})
	}
	ctx.Hijack(func(c net.Conn) {
		if cc != nil && cc.pending.Swap(nil) == nil {
			return // abandoned: closed already
		}
		if armer != nil {
			armer.Reset(c, armer.timeout) // the hijack cleared the deadlines
		}
		w := &flushWriter{bw: bufio.NewWriterSize(c, 4<<10)}
		_, err := w.Write(head)
		if err == nil {
			_, err = s.WriteTo(w)
		}
		_ = s.CloseWithError(err)
	})
}

// pendingStream is a stream waiting for its connection's hijack.
type pendingStream struct{ s Stream }

// flushWriter flushes every write.
type flushWriter struct{ bw *bufio.Writer }

func (w *flushWriter) Write(p []byte) (int, error) {
	n, err := w.bw.Write(p)
	if err == nil {
		err = w.bw.Flush()
	}
	return n, err
}
