package httpserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/rawconn"
)

// fastEcho answers 200 with the body ReadRequest read, or its failure.
func fastEcho(br *BodyReader, held chan<- *Body) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		b := new(Body)
		if f := br.ReadRequest(ctx, b); f != nil {
			f.Respond(ctx)
			return
		}
		ctx.Response.SetBody(b.Bytes) // a copy: the body goes back to its pool
		if held != nil {
			held <- b
		} else {
			b.Release()
		}
	}
}

func serveFast(t *testing.T, h fasthttp.RequestHandler, l Limits) (string, *FastServer) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewFast(h, l, nil)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return ln.Addr().String(), srv
}

// exchange writes raw on a new connection and reads one response.
func exchange(t *testing.T, addr, raw string) (*http.Response, string, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(time.Minute)))
	_, err = io.WriteString(c, raw)
	require.NoError(t, err)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body), br
}

func TestReadRequestBodiesOfKnownAndUnknownLength(t *testing.T) {
	br := &BodyReader{MaxBytes: 3 << 20, Timeout: time.Minute, Budget: NewBudget(8 << 20)}
	addr, _ := serveFast(t, fastEcho(br, nil), DefaultLimits())
	client := &http.Client{}
	for _, n := range []int{0, 1, 2, firstChunk - 1, firstChunk, firstChunk + 1, 300 << 10, 1 << 20, 1<<20 + 1, 3 << 20} {
		body := strings.Repeat("x", n)
		for _, chunked := range []bool{false, true} {
			var rd io.Reader = strings.NewReader(body)
			if chunked {
				rd = io.MultiReader(rd) // hides the length: sent chunked
			}
			req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/", rd)
			require.NoError(t, err)
			resp, err := client.Do(req)
			require.NoError(t, err)
			got, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "n=%d chunked=%v", n, chunked)
			require.Equal(t, body, string(got), "n=%d chunked=%v", n, chunked)
			if chunked {
				require.True(t, resp.Close, "a chunked request's connection is closed after the answer")
			}
		}
	}
	require.Zero(t, br.Budget.Used(), "every body gave its memory back")
}

func TestReadRequestRefusesBodiesOverTheLimitAndTheBudget(t *testing.T) {
	br := &BodyReader{MaxBytes: 100, Timeout: time.Minute, Budget: NewBudget(1 << 20)}
	held := make(chan *Body, 1)
	addr, _ := serveFast(t, fastEcho(br, held), DefaultLimits())
	for _, raw := range []string{
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + strings.Repeat("x", 101),
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + strings.Repeat("x", 101) + "\r\n0\r\n\r\n",
	} {
		resp, body, _ := exchange(t, addr, raw)
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
		require.Equal(t, "request_too_large", errorCode(t, []byte(body)))
	}

	br.MaxBytes = 1 << 20
	resp, _, _ := exchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 700000\r\n\r\n"+strings.Repeat("x", 700000))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	first := <-held // 700,000 of the budget's 1 MiB are taken
	// fasthttp reads the first byte of a body with the headers; the rest
	// is never read.
	resp, body, _ := exchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 400000\r\n\r\n{")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "refused before the body is read")
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Equal(t, "server_overloaded", errorCode(t, []byte(body)))
	require.True(t, resp.Close)
	first.Release()
	require.Zero(t, br.Budget.Used())
}

// A body that stops coming is answered 408 once the body timeout passes,
// and the connection closed; so is one whose first byte never comes
// (fasthttp reads it with the headers, under the header timeout).
func TestFastSlowBodyIsAnswered408(t *testing.T) {
	l := DefaultLimits()
	l.ReadHeaderTimeout, l.BodyReadTimeout = 300*time.Millisecond, 200*time.Millisecond
	br := &BodyReader{MaxBytes: 32 << 20, Timeout: l.BodyReadTimeout, Budget: NewBudget(64 << 20)}
	addr, _ := serveFast(t, fastEcho(br, nil), l)
	for _, tc := range []struct{ sent, code string }{
		{strings.Repeat("x", 1000), "request_body_timeout"},
		{"", "request_read_timeout"},
	} {
		resp, body, rest := exchange(t, addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\n\r\n"+tc.sent)
		require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
		require.Equal(t, tc.code, errorCode(t, []byte(body)))
		require.True(t, resp.Close)
		_, err := rest.ReadByte()
		require.ErrorIs(t, err, io.EOF)
	}
	require.Eventually(t, func() bool { return br.Budget.Used() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// Headers that never finish end the connection, with a 408.
func TestFastSlowHeadersCloseTheConnection(t *testing.T) {
	l := DefaultLimits()
	l.ReadHeaderTimeout = 200 * time.Millisecond
	addr, _ := serveFast(t, func(ctx *fasthttp.RequestCtx) {}, l)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)))
	got, err := io.ReadAll(c)
	require.NoError(t, err, "the server closes the connection, the test's deadline does not")
	require.Contains(t, string(got), "408 Request Timeout")
}

func TestFastOversizedHeadersAre431(t *testing.T) {
	l := DefaultLimits()
	l.MaxHeaderBytes = 4 << 10
	addr, _ := serveFast(t, func(ctx *fasthttp.RequestCtx) {}, l)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 8<<10))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	require.Equal(t, "request_header_too_large", errorCode(t, body))
}

func TestFastConnectionsPastTheCapAre503(t *testing.T) {
	l := DefaultLimits()
	l.MaxConnections = 1
	addr, _ := serveFast(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") }, l)
	_, _, _ = exchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") // holds the one place
	resp, body, _ := exchange(t, addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "too_many_connections", errorCode(t, []byte(body)))
}

// Close cuts the connections a request is still running on: its handler
// sees its client gone (PeerClosed).
func TestFastCloseCutsActiveConnections(t *testing.T) {
	gone := make(chan bool, 1)
	entered := make(chan struct{})
	var srv *FastServer
	addr, srv := serveFast(t, func(ctx *fasthttp.RequestCtx) {
		close(entered)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && !PeerClosed(ctx.Conn()) {
			time.Sleep(5 * time.Millisecond) // a handler's own polling, as an engine wait does
		}
		gone <- PeerClosed(ctx.Conn())
	}, DefaultLimits())
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	<-entered
	require.NoError(t, srv.Close())
	require.True(t, <-gone)
}

// loopbackPair returns both ends of a TCP connection on loopback, closed
// when the test ends.
func loopbackPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestPeerClosed(t *testing.T) {
	c, s := loopbackPair(t)
	assert.False(t, PeerClosed(s), "an idle open connection")
	_, err := io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	assert.False(t, PeerClosed(s), "a peer that sent more (a pipelined request) cannot be told closed")
	buf := make([]byte, 64)
	n, err := s.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "GET / HTTP/1.1\r\n\r\n", string(buf[:n]), "the look consumed nothing")

	c, s = loopbackPair(t)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.Eventually(t, func() bool { return PeerClosed(s) }, time.Second, time.Millisecond, "a half-close")

	c, s = loopbackPair(t)
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return PeerClosed(s) }, time.Second, time.Millisecond, "a close")

	_, s = loopbackPair(t)
	require.NoError(t, s.Close())
	assert.True(t, PeerClosed(s), "a connection closed here")

	_, s = loopbackPair(t)
	capped := &cappedConn{Conn: s, release: func() {}}
	assert.False(t, PeerClosed(capped), "through the listener's wrapper")

	c, s = loopbackPair(t)
	capped = &cappedConn{Conn: rawconn.Wrap(s), release: func() {}}
	assert.False(t, PeerClosed(capped), "through the listener's wrappers, raw socket inside")
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool { return PeerClosed(capped) }, time.Second, time.Millisecond, "a close, through both wrappers")
}

// PeerClosed allocates nothing on a connection as the listener accepts it:
// the activator looks at every waiting client every check interval.
func TestPeerClosedAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates (and drops pooled items)")
	}
	_, s := loopbackPair(t)
	capped := &cappedConn{Conn: rawconn.Wrap(s), release: func() {}}
	defer capped.Close()
	require.False(t, PeerClosed(capped))
	assert.Zero(t, testing.AllocsPerRun(100, func() { PeerClosed(capped) }))
}

func TestBodyPoolClasses(t *testing.T) {
	for _, tc := range []struct{ n, want int }{
		{0, 1 << 10}, {1, 1 << 10}, {1 << 10, 1 << 10}, {1<<10 + 1, 2 << 10}, {300 << 10, 512 << 10}, {1 << 20, 1 << 20},
	} {
		b := getBuf(tc.n)
		require.NotNil(t, b, "n=%d", tc.n)
		assert.Equal(t, tc.want, cap(*b), "n=%d", tc.n)
		putBuf(b)
	}
	assert.Nil(t, getBuf(1<<20+1), "larger bodies are not pooled")
	putBuf(&[]byte{}) // foreign sizes are dropped, not pooled
	odd := make([]byte, 0, 3000)
	putBuf(&odd)
}

// A client that takes nothing of a response is cut off once the write
// timeout passes, however long the response.
func TestWriteArmerCutsAClientThatDoesNotRead(t *testing.T) {
	_, s := loopbackPair(t)
	var err error
	var a WriteArmer
	a.Reset(s, 200*time.Millisecond)
	chunk := make([]byte, 64<<10)
	start := time.Now()
	for {
		a.Arm()
		if _, err = s.Write(chunk); err != nil {
			break
		}
		require.Less(t, time.Since(start), 30*time.Second, "the write never failed")
	}
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout(), fmt.Sprint(err))
}

// A Serve that starts after Close (its goroutine was late) closes its
// listener and returns: it does not serve, nor block whoever waits for it.
func TestFastServeAfterCloseReturns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewFast(func(*fasthttp.RequestCtx) {}, DefaultLimits(), nil)
	require.NoError(t, srv.Close())
	require.ErrorIs(t, srv.Serve(ln), http.ErrServerClosed)
	_, err = ln.Accept()
	require.ErrorIs(t, err, net.ErrClosed, "the listener is closed")
}

// Shutdown, like Close, stops a Serve that starts after it, and one that
// started just before it (its goroutine had not given fasthttp the
// listener yet): a process told to stop right after it started still
// stops.
func TestFastShutdownStopsAServeStartedAroundIt(t *testing.T) {
	t.Run("after", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := NewFast(func(*fasthttp.RequestCtx) {}, DefaultLimits(), nil)
		require.NoError(t, srv.Shutdown(t.Context()))
		require.ErrorIs(t, srv.Serve(ln), http.ErrServerClosed)
		_, err = ln.Accept()
		require.ErrorIs(t, err, net.ErrClosed, "the listener is closed")
	})
	t.Run("racing", func(t *testing.T) {
		for range 200 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			srv := NewFast(func(*fasthttp.RequestCtx) {}, DefaultLimits(), nil)
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			require.NoError(t, srv.Shutdown(t.Context()))
			select { // returns, whichever ran first
			case err = <-served:
			case <-time.After(time.Minute): // a guard against a hang, not a wait
				t.Fatal("Serve still serving after Shutdown")
			}
			if err != nil {
				require.ErrorIs(t, err, http.ErrServerClosed)
			}
			_, err = ln.Accept()
			require.ErrorIs(t, err, net.ErrClosed, "the listener is closed")
		}
	})
}
