package httpserver

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// parts is a Stream of a few writes; closed gets what it was closed with.
type parts struct {
	StreamBody
	writes []string
	closed chan error
}

func (p *parts) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, s := range p.writes {
		m, err := io.WriteString(w, s)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (p *parts) CloseWithError(err error) error {
	p.closed <- err
	return nil
}

func streamServer(t *testing.T, p *parts) string {
	addr, _ := serveFast(t, func(ctx *fasthttp.RequestCtx) {
		ctx.Response.Header.SetContentType("text/event-stream")
		SetStream(ctx, p, -1, &WriteArmer{})
	}, DefaultLimits())
	return addr
}

func TestSetStreamChunksForHTTP11(t *testing.T) {
	p := &parts{writes: []string{"data: a\n\n", "data: b\n\n"}, closed: make(chan error, 1)}
	addr := streamServer(t, p)
	resp, body, _ := exchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	assert.Equal(t, []string{"chunked"}, resp.TransferEncoding)
	assert.Equal(t, "data: a\n\ndata: b\n\n", body)
	require.NoError(t, <-p.closed, "closed once, with nil: the body ended")
}

// An HTTP/1.0 client gets the stream unframed on the hijacked connection,
// which closes at its end.
func TestSetStreamUnframedForHTTP10(t *testing.T) {
	p := &parts{writes: []string{"data: a\n\n", "data: b\n\n"}, closed: make(chan error, 1)}
	addr := streamServer(t, p)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	require.NoError(t, err)
	raw, err := io.ReadAll(c) // to the close
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
	require.NoError(t, err)
	assert.Empty(t, resp.TransferEncoding)
	assert.EqualValues(t, -1, resp.ContentLength)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "data: a\n\ndata: b\n\n", string(body))
	require.NoError(t, <-p.closed)
}

// A connection closed while its stream waits for the hijack closes the
// stream (ErrStreamAbandoned), once; the hijack that runs later does
// nothing.
func TestStreamAbandonedBeforeTheHijack(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	cc := &cappedConn{Conn: a, release: func() {}}
	p := &parts{closed: make(chan error, 2)}
	cc.pending.Store(&pendingStream{p})
	require.NoError(t, cc.Close())
	assert.True(t, errors.Is(<-p.closed, ErrStreamAbandoned))
	assert.Nil(t, cc.pending.Swap(nil), "the hijack finds nothing to write")
	require.NoError(t, cc.Close())
	assert.Empty(t, p.closed, "closed once")
}
