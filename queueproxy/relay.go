package queueproxy

import (
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// A streamed response is written by fasthttp after the handler returned:
// the flow is the response's body stream. fasthttp calls its WriteTo with a
// writer that sends each Write as one chunk and flushes it (or, for a body
// of known length, writes it through), then CloseWithError, which finishes
// the flow. No goroutine is started for it (except for an HTTP/1.0 client,
// below): the connection's own goroutine relays the stream.
var (
	_ httpserver.Stream            = (*flow)(nil)
	_ fasthttp.BodyWriterTo        = (*flow)(nil)
	_ fasthttp.ReadCloserWithError = (*flow)(nil)
)

// startStream answers with the engine's status and headers (copied already
// unless sse) and hands the body over to fasthttp as a stream of the flow:
// SSE event by event (measured, and with the usage trailer, when the
// request is), or as it arrives, after prefix, for other bodies.
func (f *flow) startStream(sse bool, prefix []byte) {
	ctx := f.ctx
	resp := &ctx.Response
	f.streaming, f.sse, f.prefix = true, sse, prefix
	if sse {
		f.copyHeaders()
		if f.measured {
			f.metered = true
			f.meter = meter{ex: &f.ex, strip: f.strip, itl: f.p.metrics.itl, usage: &f.usage, tmp: &f.usage2}
		}
	}
	f.ex.code = f.engineStatus
	resp.SetStatusCode(f.engineStatus)
	resp.ImmediateHeaderFlush = true // the client learns at once that its request is under way
	f.armer.Reset(f.client, f.p.cfg.Limits.WriteTimeout)
	length := -1
	if cl := f.resp.Header.ContentLength(); !sse && cl >= 0 && len(prefix) == 0 {
		length = cl
	}
	if sse && f.measured && ctx.Request.Header.IsHTTP11() {
		_ = resp.Header.SetTrailer(openai.UsageHeader) // sent as the stream ends
	}
	httpserver.SetStream(ctx, f, length, &f.armer)
}

// CloseWithError finishes the flow once fasthttp is done with the stream
// (err: why it stopped writing, nil when the stream ended).
func (f *flow) CloseWithError(err error) error {
	if err != nil && !f.ex.broken {
		f.ex.clientGone = true
	}
	f.finish()
	return nil
}

// WriteTo relays the engine's response body to w until it ends. An SSE
// stream goes event by event: the events completed by one read from the
// engine are one write (one chunk, flushed), measured and, for the usage
// chunk the client did not ask for, hidden. While the engine sends nothing
// the client is checked every checkInterval (upstream.Conn.Wait's watchdog), and a
// client gone, or one that takes nothing for the write timeout, ends the
// relay with an error: fasthttp then closes the client's connection and the
// flow closes the engine's, which cancels the request there. A failure of
// the engine after the stream started becomes one SSE error event (and a
// clean end of the response) on an SSE stream; any other body is cut short,
// so that the client sees a truncated response rather than a complete one.
func (f *flow) WriteTo(w io.Writer) (int64, error) {
	var written int64
	write := func(b []byte) error {
		f.armer.Arm()
		n, err := w.Write(b)
		written += int64(n)
		if err != nil {
			f.ex.clientGone = true
		}
		return err
	}
	if len(f.prefix) > 0 {
		if err := write(f.prefix); err != nil {
			return written, err
		}
		f.prefix = nil
	}
	for {
		if err := f.conn.Wait(f.deadline, f); err != nil {
			return written, f.relayFailed(write, err)
		}
		rb := relayBufPool.Get().(*relayBuf)
		done, err := f.relayRead(rb, write)
		rb.out = rb.out[:0]
		if cap(rb.out) > 64<<10 {
			rb.out = nil
		}
		relayBufPool.Put(rb)
		if done || err != nil {
			return written, err
		}
	}
}

// relayBuf is a relay's read buffer and the events of one read. A relay
// holds one only while it relays a read, so that streams waiting for their
// next event hold none (2,000 streams).
type relayBuf struct {
	rbuf []byte
	out  []byte
}

var relayBufPool = sync.Pool{New: func() any { return &relayBuf{rbuf: make([]byte, copyBufferSize)} }}

// relayRead relays one read of the engine's body; done when the body
// ended (or failed into an SSE error event).
func (f *flow) relayRead(rb *relayBuf, write func([]byte) error) (done bool, err error) {
	n, rerr := f.stream.Read(rb.rbuf)
	if n > 0 {
		data := rb.rbuf[:n]
		if f.sse {
			data = f.splitEvents(rb, data, time.Now())
		}
		if len(data) > 0 {
			if err := write(data); err != nil {
				return true, err
			}
		}
	}
	if rerr == io.EOF {
		f.bodyDone = true
		if f.sse {
			if rest := f.events.Rest(); len(rest) > 0 {
				if err := write(rest); err != nil {
					return true, err
				}
			}
			f.setUsageTrailer()
		}
		return true, nil
	}
	if rerr != nil {
		return true, f.relayFailed(write, rerr)
	}
	return false, nil
}

// splitEvents feeds one read to the event splitter and returns the events
// it completed that go to the client (in rb.out).
func (f *flow) splitEvents(rb *relayBuf, data []byte, now time.Time) []byte {
	rb.out = rb.out[:0]
	_ = f.events.Feed(data, func(ev []byte) error {
		if !f.metered || f.meter.event(ev, now) {
			rb.out = append(rb.out, ev...)
		}
		return nil
	})
	return rb.out
}

// relayFailed handles a failure to read the engine's body mid-stream.
func (f *flow) relayFailed(write func([]byte) error, err error) error {
	if errors.Is(err, upstream.ErrCallerGone) {
		f.ex.clientGone = true
		return err
	}
	f.ex.broken = true
	timeout := f.pastDeadline(err)
	path := string(f.ctx.Path())
	if !f.sse {
		f.p.log.Warn("engine response broken", slog.String("path", path), slog.Any("error", err), slog.Bool("timeout", timeout))
		return err
	}
	f.p.log.Warn("stream broken", slog.String("path", path), slog.Any("error", err))
	e := openai.Err(openai.TypeServer, "engine_unavailable", "the inference engine failed mid-stream: "+err.Error())
	if timeout {
		e = openai.Err(openai.TypeTimeout, "request_timeout", "the stream exceeded the request timeout")
	}
	if werr := write(openai.ErrorEvent(e)); werr != nil {
		return werr
	}
	f.setUsageTrailer()
	return nil
}

// setUsageTrailer sets the declared usage trailer of a measured stream:
// fasthttp writes it after the last chunk. Nothing when the engine
// reported no usage.
func (f *flow) setUsageTrailer() {
	if f.metered && f.ex.usage != nil && f.ctx.Request.Header.IsHTTP11() {
		f.ctx.Response.Header.SetBytesV(openai.UsageHeader, appendUsageHeader(f.scratch[:0], f.ex.usage))
	}
}
