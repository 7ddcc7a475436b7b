package queueproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/testing/hostile"
)

// slowEngine is a simulator with its real token pace (milliseconds a
// token), so that a long answer takes minutes, and a way to read how many
// requests it runs.
func slowEngine(t *testing.T) (url string, running func() float64) {
	t.Helper()
	url = simtest.Start(t, simtest.Config(func(c *sim.Config) {
		c.Model, c.ZeroLatency, c.MaxModelLen, c.KVBlocks = "m", false, 1_000_000, 70_000
	}))
	return url, func() float64 {
		v, ok := hostile.Gauge(url+"/metrics", "vllm:num_requests_running")
		if !ok {
			return -1
		}
		return v
	}
}

// rawRequest is a completions request of a long answer, as a client writes
// it on a connection.
func rawRequest(proto string, stream bool) string {
	body := `{"model":"m","prompt":"hello","max_tokens":200000,"stream":` + strconv.FormatBool(stream) + `}`
	return "POST /v1/completions " + proto + "\r\nHost: qp\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// A client that leaves cancels the engine's work, whether it waits for a
// whole answer (the queue-proxy notices while it waits on the engine: a
// look at the connection every checkInterval) or reads a stream (the look
// between events, and the failed write): the engine runs nothing within a
// second.
func TestClientLeavingCancelsEngineWork(t *testing.T) {
	eng, running := slowEngine(t)
	p := newProxy(t, eng, false)
	addr := strings.TrimPrefix(p.srv.URL, "http://")
	for i, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer c.Close()
			_, err = io.WriteString(c, rawRequest("HTTP/1.1", stream))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return running() == 1 }, waitFor, tick, "the engine runs the request")
			if stream {
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				_, err = resp.Body.Read(make([]byte, 1))
				require.NoError(t, err, "tokens arrive")
			}
			require.NoError(t, c.Close())
			require.Eventually(t, func() bool { return running() == 0 }, time.Second, tick,
				"the engine stops within a second of the client leaving")
			require.Eventually(t, func() bool { s := p.Stat(); return s.Requests == uint64(i+1) && s.InFlight == 0 }, waitFor, tick)
			assert.Zero(t, p.Stat().Errors, "a client leaving is not an error")
		})
	}
}

// A client that shuts its side down after its request reads, to the
// queue-proxy as to net/http, as one that left: the engine's work is
// cancelled, and the client, if it still reads, learns why (499).
func TestHalfClosedClientCancels(t *testing.T) {
	eng, running := slowEngine(t)
	p := newProxy(t, eng, false)
	c, err := net.Dial("tcp", strings.TrimPrefix(p.srv.URL, "http://"))
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, rawRequest("HTTP/1.1", false))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return running() == 1 }, waitFor, tick)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	assert.Equal(t, statusClientClosed, resp.StatusCode)
	assert.True(t, resp.Close)
	assert.Equal(t, "client_closed_request", decodeError(t, resp).Code)
	require.Eventually(t, func() bool { return running() == 0 }, time.Second, tick)
}

// An HTTP/1.0 client cannot read chunks: a stream reaches it unframed,
// event by event, and ends with the connection; a whole answer has its
// Content-Length.
func TestHTTP10Client(t *testing.T) {
	step := make(chan struct{})
	close(step)
	bodies := make(chan string, 2)
	p := newProxy(t, streamEngine(t, step, bodies).URL, false)
	addr := strings.TrimPrefix(p.srv.URL, "http://")

	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	body := `{"model":"m","stream":true}`
	_, err = fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
	raw, err := io.ReadAll(c)
	require.NoError(t, err, "the stream ends with the connection")
	head, events, ok := strings.Cut(string(raw), "\r\n\r\n")
	require.True(t, ok, "%q", raw)
	assert.Contains(t, head, "200 OK")
	assert.NotContains(t, strings.ToLower(head), "transfer-encoding")
	assert.NotContains(t, strings.ToLower(head), "content-length")
	assert.Equal(t, wholeStream, events)
	recv(t, bodies, "upstream body")

	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, completionBody)
		},
	})
	p = newProxy(t, eng.URL, false)
	c2, err := net.Dial("tcp", strings.TrimPrefix(p.srv.URL, "http://"))
	require.NoError(t, err)
	defer c2.Close()
	_, err = fmt.Fprintf(c2, "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s", len(body)-14, `{"model":"m"}`)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
	require.NoError(t, err)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, completionBody, string(got))
	assert.Equal(t, int64(len(completionBody)), resp.ContentLength)
	assert.Equal(t, "prompt=7, completion=3, cached=4", resp.Header.Get(openai.UsageHeader))
}

// Hostile framing the shared suite does not cover: a malformed chunked
// body, a Content-Length that is not a number, a header line without a
// colon, and a header section with too many bytes in one line; each is
// answered 400 (or 431) and the connection closed, and the proxy goes on
// serving.
func TestHostileFraming(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body)
			_, _ = io.WriteString(w, completionBody)
		},
	})
	p := newProxy(t, eng.URL, false, "--max-header-bytes=4096")
	addr := strings.TrimPrefix(p.srv.URL, "http://")
	for _, tc := range []struct {
		name, req string
		want      int
	}{
		{"bad chunk size", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", http.StatusBadRequest},
		{"chunk longer than said", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"model\":1}\r\n0\r\n\r\n", http.StatusBadRequest},
		{"content-length not a number", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n{}", http.StatusBadRequest},
		{"header without colon", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nNoColon\r\nContent-Length: 2\r\n\r\n{}", http.StatusBadRequest},
		{"unsupported transfer-encoding", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}", http.StatusBadRequest},
		{"huge header", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("y", 8<<10) + "\r\nContent-Length: 2\r\n\r\n{}", http.StatusRequestHeaderFieldsTooLarge},
		{"many headers", "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 1000) + "Content-Length: 2\r\n\r\n{}", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.SetDeadline(time.Now().Add(waitFor)))
			_, err = io.WriteString(c, tc.req)
			require.NoError(t, err)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			assert.Equal(t, tc.want, resp.StatusCode)
			_, _ = io.ReadAll(resp.Body)
			rest, err := io.ReadAll(br)
			if err != nil {
				// Bytes of the request left unread when the server closes
				// make the peer's TCP reset the connection after the answer.
				require.ErrorIs(t, err, syscall.ECONNRESET)
			}
			assert.Empty(t, rest, "the connection is closed")
		})
	}
	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m"}`)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the proxy goes on serving")
}
