package httpserver

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// echo serves a body reader: 200 with the body, or the failure.
func echo(br *BodyReader, held chan<- *Body) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, f := br.Read(w, r)
		if f != nil {
			f.Write(w)
			return
		}
		if held != nil {
			held <- b // the test releases it
		} else {
			defer b.Release()
		}
		_, _ = w.Write(b.Bytes)
	}
}

func serve(t *testing.T, h http.Handler, l Limits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := New(h, l, nil)
	go func() { _ = srv.Serve(Listen(ln, l.MaxConnections)) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var env openai.Envelope
	require.NoError(t, json.Unmarshal(body, &env), "an OpenAI-shaped error: %s", body)
	return env.Error.Code
}

func TestBodyReaderReadsBodiesOfKnownAndUnknownLength(t *testing.T) {
	br := &BodyReader{MaxBytes: 1 << 20, Timeout: time.Minute, Budget: NewBudget(4 << 20)}
	h := echo(br, nil)
	for _, n := range []int{0, 1, firstChunk - 1, firstChunk, firstChunk + 1, 300 << 10, 1 << 20} {
		body := strings.Repeat("x", n)
		for _, chunked := range []bool{false, true} {
			var rd io.Reader = strings.NewReader(body)
			if chunked {
				rd = io.MultiReader(rd) // hides the length: sent chunked
			}
			req := httptest.NewRequest(http.MethodPost, "/", rd)
			if chunked {
				req.ContentLength = -1
			}
			rec := httptest.NewRecorder()
			h(rec, req)
			require.Equal(t, http.StatusOK, rec.Code, "n=%d chunked=%v", n, chunked)
			require.Equal(t, n, rec.Body.Len())
		}
	}
	require.Zero(t, br.Budget.Used(), "every body gave its memory back")
}

func TestBodyReaderRefusesBodiesOverTheLimit(t *testing.T) {
	br := &BodyReader{MaxBytes: 100, Budget: NewBudget(1 << 20)}
	for _, chunked := range []bool{false, true} {
		req := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader(strings.Repeat("x", 101))))
		if !chunked {
			req.ContentLength = 101
		}
		rec := httptest.NewRecorder()
		echo(br, nil)(rec, req)
		require.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
		require.Equal(t, "request_too_large", errorCode(t, rec.Body.Bytes()))
	}
	require.Zero(t, br.Budget.Used())
}

func TestBodyBudgetIsSharedAcrossRequests(t *testing.T) {
	br := &BodyReader{MaxBytes: 1 << 20, Budget: NewBudget(1 << 20)}
	held := make(chan *Body, 1)
	h := echo(br, held)
	post := func(n int, chunked bool) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader(strings.Repeat("x", n))))
		if !chunked {
			req.ContentLength = int64(n)
		}
		rec := httptest.NewRecorder()
		h(rec, req)
		return rec
	}
	require.Equal(t, http.StatusOK, post(700<<10, false).Code)
	first := <-held // still held: 700 KiB of the 1 MiB are taken
	for _, chunked := range []bool{false, true} {
		rec := post(400<<10, chunked)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code, "chunked=%v", chunked)
		require.Equal(t, "1", rec.Header().Get("Retry-After"))
		require.Equal(t, "server_overloaded", errorCode(t, rec.Body.Bytes()))
	}
	require.Equal(t, int64(700<<10), br.Budget.Used(), "a refused body holds nothing")
	first.Release()
	first.Release() // twice is harmless
	require.Zero(t, br.Budget.Used())
	require.Equal(t, http.StatusOK, post(400<<10, true).Code, "the memory is free again")
	(<-held).Release()
	require.Zero(t, br.Budget.Used())
}

// A body that never finishes is answered 408 once the body timeout passes,
// and its memory is given back.
func TestSlowBodyIsAnswered408(t *testing.T) {
	l := DefaultLimits()
	l.BodyReadTimeout = 200 * time.Millisecond
	br := &BodyReader{MaxBytes: 32 << 20, Timeout: l.BodyReadTimeout, Budget: NewBudget(64 << 20)}
	addr := serve(t, echo(br, nil), l)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\n\r\n%s", strings.Repeat("x", 1000))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, "request_body_timeout", errorCode(t, body))
	require.True(t, resp.Close, "the connection is not kept")
	require.Eventually(t, func() bool { return br.Budget.Used() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// Headers that never finish end the connection.
func TestSlowHeadersCloseTheConnection(t *testing.T) {
	l := DefaultLimits()
	l.ReadHeaderTimeout = 200 * time.Millisecond
	addr := serve(t, http.NotFoundHandler(), l)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)))
	_, err = io.ReadAll(c)
	require.NoError(t, err, "the server closes the connection (EOF), the test's deadline is not what ends it")
}

func TestOversizedHeadersAre431(t *testing.T) {
	l := DefaultLimits()
	l.MaxHeaderBytes = 4 << 10
	addr := serve(t, http.NotFoundHandler(), l)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 8<<10))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
}

func TestConnectionsPastTheCapAre503(t *testing.T) {
	l := DefaultLimits()
	l.MaxConnections = 2
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }), l)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		held = append(held, c)
		// A request answered proves the server accepted this connection.
		_, err = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	c.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Equal(t, "too_many_connections", errorCode(t, body))

	held[0].Close() // a place frees up
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond)
	held[1].Close()
}

func TestLimitsValidateNamesTheFlag(t *testing.T) {
	require.NoError(t, DefaultLimits().Validate())
	l := DefaultLimits()
	l.BodyReadTimeout = 0
	l.MaxConnections = 0
	err := l.Validate()
	require.ErrorContains(t, err, "body-read-timeout")
	require.ErrorContains(t, err, "max-connections")
}

// A client that reads nothing of a stream is cut off; one that waits while
// the server has nothing to send is not.
func TestClientWriterCutsOffAClientThatDoesNotRead(t *testing.T) {
	const timeout = 300 * time.Millisecond
	failed := make(chan error, 1)
	pause := make(chan struct{})
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := NewClientWriter(w, timeout)
		defer cw.Done()
		if r.URL.Path == "/pause" {
			_, _ = cw.Write([]byte("first\n"))
			_ = cw.Flush()
			<-pause // idle far longer than the timeout: nothing to write
			_, err := cw.Write([]byte("second\n"))
			if err == nil {
				err = cw.Flush()
			}
			failed <- err
			return
		}
		chunk := []byte(strings.Repeat("x", 32<<10))
		for {
			if _, err := cw.Write(chunk); err != nil {
				failed <- err
				return
			}
			if err := cw.Flush(); err != nil {
				failed <- err
				return
			}
		}
	}), DefaultLimits())

	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.(*net.TCPConn).SetReadBuffer(4<<10))
	_, err = io.WriteString(c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	select {
	case err := <-failed:
		require.Error(t, err, "the write to a client that reads nothing fails")
	case <-time.After(time.Minute):
		t.Fatal("the server still writes to a client that reads nothing")
	}

	resp, err := http.Get("http://" + addr + "/pause")
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "first\n", line)
	time.Sleep(3 * timeout) // the client waits; the server is idle, not blocked
	close(pause)
	require.NoError(t, <-failed, "an idle pause is not a client that stopped reading")
	line, err = br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "second\n", line)
}
