package sim

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// smallSendBuffers gives every accepted connection a small socket send
// buffer, so that a client that does not read blocks the server's writes
// after a few kilobytes rather than after the megabytes loopback's
// autotuning allows.
func smallSendBuffers(ln net.Listener) net.Listener { return smallSendBufferListener{ln} }

type smallSendBufferListener struct{ net.Listener }

func (l smallSendBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// rawRequest sends a POST over a fresh connection and returns the
// connection, unread; it is closed when the test
// ends (before the server stops).
func (ts *testServer) rawRequest(t *testing.T, path, body string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body)
	require.NoError(t, err)
	return conn
}

// maxStreamBuffer is what a stream may buffer: streamBufferBytes plus the
// events that cross it (a token chunk, or the final chunk, usage and [DONE]
// of these tests' short ids and model name).
const maxStreamBuffer = streamBufferBytes + 1024

func TestStreamSlowReaderGetsEveryTokenWithBoundedBuffering(t *testing.T) {
	ts := startServerOn(t, smallSendBuffers, func(c *Config) { c.ZeroLatency = true; c.WriteTimeout = time.Minute })
	const tokens = 20000 // ~3.6 MB of chunks
	conn := ts.rawRequest(t, cmplPath, fmt.Sprintf(`{"prompt":"hello","stream":true,"max_tokens":%d}`, tokens))

	// The client reads nothing until the engine has produced every token:
	// the stream lags by all of them, and they are only counted.
	require.Eventually(t, func() bool {
		return ts.value(t, "vllm:request_success_total", "finished_reason", "length") == 1
	}, 30*time.Second, 5*time.Millisecond)

	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	text, finals, done := 0, 0, false
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		switch {
		case string(data) == "[DONE]":
			done = true
		case bytes.Contains(data, []byte(`"finish_reason":"length"`)):
			finals++
		default:
			text++
		}
	}
	assert.Equal(t, tokens, text, "every token arrives: backpressure, not loss")
	assert.Equal(t, 1, finals)
	assert.True(t, done)
	assert.LessOrEqual(t, ts.streamPeak.Load(), int64(maxStreamBuffer), "the stream buffered at most one batch")
	assert.Zero(t, ts.writeTimeouts.Load())
}

func TestStreamClientThatNeverReadsIsAborted(t *testing.T) {
	ts := startServerOn(t, smallSendBuffers, func(c *Config) {
		c.TimeScale = 10
		c.MaxModelLen = 200000
		c.WriteTimeout = 200 * time.Millisecond
	})
	// 190,000 tokens would take the engine two minutes of real time.
	conn := ts.rawRequest(t, cmplPath, `{"prompt":"hello","stream":true,"max_tokens":190000}`)
	require.Eventually(t, func() bool { return ts.value(t, "vllm:num_requests_running") == 1 }, 10*time.Second, time.Millisecond)

	// The engine keeps serving others.
	status, body := ts.post(t, cmplPath, `{"prompt":"another client","max_tokens":3}`)
	require.Equal(t, http.StatusOK, status, "%s", body)

	// Once a write has waited --write-timeout, the request is aborted and
	// its sequence leaves the batch with its KV blocks.
	require.Eventually(t, func() bool {
		return ts.writeTimeouts.Load() == 1 && ts.value(t, "vllm:num_requests_running") == 0
	}, 30*time.Second, 5*time.Millisecond, "the stream still runs for a client that does not read")
	assert.Equal(t, 1.0, ts.value(t, "vllm:request_success_total", "finished_reason", "abort"))
	assert.Zero(t, ts.value(t, "vllm:kv_cache_usage_perc"))
	assert.LessOrEqual(t, ts.streamPeak.Load(), int64(maxStreamBuffer))

	// The server closed the connection: what the kernel held, then the end.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second))) // a hang fails, not blocks
	_, err := io.Copy(io.Discard, conn)
	assert.NotErrorIs(t, err, os.ErrDeadlineExceeded)

	// And the engine still serves.
	status, body = ts.post(t, cmplPath, `{"prompt":"later","max_tokens":3}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
}

func TestResponseClientThatNeverReadsIsAbandoned(t *testing.T) {
	ts := startServerOn(t, smallSendBuffers, func(c *Config) {
		c.ZeroLatency = true
		c.MaxModelLen = 60000
		c.WriteTimeout = 200 * time.Millisecond
	})
	conn := ts.rawRequest(t, cmplPath, `{"prompt":"hello","max_tokens":50000}`) // a ~330 kB response
	require.Eventually(t, func() bool { return ts.writeTimeouts.Load() == 1 }, 30*time.Second, 5*time.Millisecond,
		"the handler still waits on a client that does not read")
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second))) // a hang fails, not blocks
	_, err := io.Copy(io.Discard, conn)
	assert.NotErrorIs(t, err, os.ErrDeadlineExceeded, "the connection is closed")
}

func TestKeepAliveAfterStreamHasNoWriteDeadline(t *testing.T) {
	// A stream's write deadline must not outlive it on a kept-alive
	// connection (net/http clears it after each request): a later response
	// on it that is written after that deadline, by a handler that sets
	// none, still arrives.
	ts := startServer(t, func(c *Config) { c.WriteTimeout = 20 * time.Millisecond; c.TimeScale = 1 })
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	post := func(path, body string) (status int, got string, reused bool) {
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b), reused
	}
	status, body, _ := post(cmplPath, `{"prompt":"x","stream":true,"max_tokens":2}`)
	require.Equal(t, http.StatusOK, status, body)
	require.Contains(t, body, "[DONE]")
	// 4,000 prompt tokens take the engine ~0.35 s to embed, far past the
	// stream's last deadline.
	status, body, reused := post("/v1/embeddings", `{"input":"`+strings.Repeat("abcd", 4000)+`"}`)
	require.Equal(t, http.StatusOK, status, body)
	assert.True(t, reused, "the stream's connection served the embeddings")
	assert.Zero(t, ts.writeTimeouts.Load())
}
