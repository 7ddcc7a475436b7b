// Package hostile is a suite of hostile HTTP clients for Kvasir's public
// listeners (the activator, the queue-proxy): slow headers, slow bodies,
// bodies that end early, Expect: 100-continue, pipelined requests, oversized
// headers, request smuggling attempts (TE+CL, CL+CL) and clients that never
// read a stream. Each case ends in a bounded time with the right status:
// the client side gives up after ClientDeadline, which fails the case, so a
// server that hangs is reported rather than waited for.
package hostile

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
)

// ClientDeadline bounds every exchange of the suite.
const ClientDeadline = 60 * time.Second

// Target is a server under test, started with the limits the cases expect.
type Target struct {
	// Addr is host:port of the server's public listener.
	Addr string
	// Path is an inference path, e.g. /v1/completions.
	Path string
	// Body returns a valid request body asking for maxTokens completion
	// tokens (streamed when stream is set); a negative maxTokens asks for a
	// stream long enough to outlast the server's write timeout.
	Body func(maxTokens int, stream bool) string
	// MaxHeaderBytes is the server's header limit.
	MaxHeaderBytes int
	// Idle reports whether the server under test holds no request in
	// flight (for the stream nobody reads: an engine generates regardless
	// of its client, as vLLM does, so the proof that the stream was cut is
	// the server letting go of it); nil skips that case.
	Idle func() bool
}

// Run runs every case against the target.
func Run(t *testing.T, tg Target) {
	t.Run("expect 100-continue", tg.expectContinue)
	t.Run("pipelined requests", tg.pipelined)
	t.Run("slow headers", tg.slowHeaders)
	t.Run("slow body", tg.slowBody)
	t.Run("body ends early", tg.bodyEndsEarly)
	t.Run("oversized headers", tg.oversizedHeaders)
	t.Run("smuggling TE+CL", tg.smugglingTECL)
	t.Run("smuggling CL+CL", tg.smugglingCLCL)
	if tg.Idle != nil {
		t.Run("stream never read", tg.streamNeverRead)
	}
}

func (tg Target) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", tg.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(ClientDeadline)))
	return c, bufio.NewReader(c)
}

func (tg Target) request(body string, extra ...string) string {
	return "POST " + tg.Path + " HTTP/1.1\r\nHost: " + tg.Addr + "\r\nContent-Type: application/json\r\n" +
		strings.Join(extra, "") + fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body)) + body
}

func read(t *testing.T, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err, "the server answers before the client's deadline")
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// completionTokens reads usage.completion_tokens of an answer.
func completionTokens(t *testing.T, body string) int {
	t.Helper()
	var v struct {
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &v), body)
	return v.Usage.CompletionTokens
}

func errorCode(t *testing.T, body string) string {
	t.Helper()
	var v struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &v), "an OpenAI-shaped error: %s", body)
	return v.Error.Code
}

// requireClosed asserts that the server closed the connection.
func requireClosed(t *testing.T, br *bufio.Reader) {
	t.Helper()
	rest, err := io.ReadAll(br)
	require.NoError(t, err, "the server closes the connection; the client's deadline did not end it")
	require.Empty(t, rest, "nothing more is answered")
}

// An Expect: 100-continue request gets its interim answer, then its own
// final one; the next request on the connection gets its own too (issue 11:
// one client received another's answer).
func (tg Target) expectContinue(t *testing.T) {
	c, br := tg.dial(t)
	body := tg.Body(9, false)
	_, err := io.WriteString(c, strings.TrimSuffix(tg.request(body, "Expect: 100-continue\r\n"), body))
	require.NoError(t, err)
	interim, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusContinue, interim.StatusCode)
	_, err = io.WriteString(c, body)
	require.NoError(t, err)
	resp, answer := read(t, br)
	require.Equal(t, http.StatusOK, resp.StatusCode, answer)
	require.Equal(t, 9, completionTokens(t, answer))

	_, err = io.WriteString(c, tg.request(tg.Body(2, false)))
	require.NoError(t, err)
	resp, answer = read(t, br)
	require.Equal(t, http.StatusOK, resp.StatusCode, answer)
	require.Equal(t, 2, completionTokens(t, answer), "the next request reads its own answer")

	c2, br2 := tg.dial(t) // and a new client too
	_, err = io.WriteString(c2, tg.request(tg.Body(3, false)))
	require.NoError(t, err)
	resp, answer = read(t, br2)
	require.Equal(t, http.StatusOK, resp.StatusCode, answer)
	require.Equal(t, 3, completionTokens(t, answer))
}

// Requests sent back to back on one connection are answered in order.
func (tg Target) pipelined(t *testing.T) {
	c, br := tg.dial(t)
	_, err := io.WriteString(c, tg.request(tg.Body(3, false))+tg.request(tg.Body(5, false)))
	require.NoError(t, err)
	for _, want := range []int{3, 5} {
		resp, answer := read(t, br)
		require.Equal(t, http.StatusOK, resp.StatusCode, answer)
		require.Equal(t, want, completionTokens(t, answer))
	}
}

// Headers that never finish end the connection.
func (tg Target) slowHeaders(t *testing.T) {
	c, br := tg.dial(t)
	_, err := io.WriteString(c, "POST "+tg.Path+" HTTP/1.1\r\nHost: x\r\nX-Slow: a")
	require.NoError(t, err)
	rest, err := io.ReadAll(br)
	require.NoError(t, err, "the server closes the connection")
	if len(rest) > 0 { // an answer is allowed, if it is a 408
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(rest))), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusRequestTimeout, resp.StatusCode)
	}
}

// A body announced large and sent in part is answered 408.
func (tg Target) slowBody(t *testing.T) {
	c, br := tg.dial(t)
	_, err := io.WriteString(c, "POST "+tg.Path+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"+
		`{"model":"`+strings.Repeat("x", 1000))
	require.NoError(t, err)
	resp, answer := read(t, br)
	require.Equal(t, http.StatusRequestTimeout, resp.StatusCode, answer)
	require.Equal(t, "request_body_timeout", errorCode(t, answer))
	requireClosed(t, br)
}

// A body that ends before its Content-Length is not served, and the server
// goes on serving others.
func (tg Target) bodyEndsEarly(t *testing.T) {
	c, br := tg.dial(t)
	_, err := io.WriteString(c, "POST "+tg.Path+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":")
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	if rest, err := io.ReadAll(br); err == nil && len(rest) > 0 {
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(rest))), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "no answer, or a 400")
	}
	c2, br2 := tg.dial(t)
	_, err = io.WriteString(c2, tg.request(tg.Body(2, false)))
	require.NoError(t, err)
	resp, answer := read(t, br2)
	require.Equal(t, http.StatusOK, resp.StatusCode, answer)
}

func (tg Target) oversizedHeaders(t *testing.T) {
	c, br := tg.dial(t)
	// net/http reads up to 4 KiB past its limit before it refuses.
	_, err := io.WriteString(c, tg.request(tg.Body(2, false), "X-Big: "+strings.Repeat("x", tg.MaxHeaderBytes+4<<10+1)+"\r\n"))
	require.NoError(t, err)
	resp, _ := read(t, br)
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
}

// A request with both Transfer-Encoding and Content-Length is answered once
// and its connection closed: what a Content-Length-framing proxy in front
// would take for a second request is never served (RFC 9112 6.1).
func (tg Target) smugglingTECL(t *testing.T) {
	c, br := tg.dial(t)
	body := tg.Body(2, false)
	smuggled := "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
	_, err := io.WriteString(c, "POST "+tg.Path+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"+
		fmt.Sprintf("Content-Length: %d\r\n\r\n", 4)+fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)+smuggled)
	require.NoError(t, err)
	resp, answer := read(t, br)
	require.Contains(t, []int{http.StatusOK, http.StatusBadRequest}, resp.StatusCode, answer)
	requireClosed(t, br)
}

// Two different Content-Lengths are a 400.
func (tg Target) smugglingCLCL(t *testing.T) {
	c, br := tg.dial(t)
	body := tg.Body(2, false)
	_, err := io.WriteString(c, "POST "+tg.Path+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		fmt.Sprintf("Content-Length: %d\r\nContent-Length: %d\r\n\r\n", len(body), len(body)-1)+body)
	require.NoError(t, err)
	resp, _ := read(t, br)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

// A client that asks for a long stream and reads nothing is cut off once
// the server's write timeout passes: the server lets go of the request.
func (tg Target) streamNeverRead(t *testing.T) {
	c, err := net.Dial("tcp", tg.Addr)
	require.NoError(t, err)
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		require.NoError(t, tc.SetReadBuffer(4<<10)) // fills up at once
	}
	_, err = io.WriteString(c, tg.request(tg.Body(-1, true)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !tg.Idle() }, ClientDeadline, 20*time.Millisecond, "the stream starts")
	require.Eventually(t, tg.Idle, ClientDeadline, 50*time.Millisecond,
		"the server lets go of a stream nobody reads")
}

// Gauge sums the samples of a metric family in the Prometheus text served
// at url; ok is false when the metric is absent or the scrape fails.
func Gauge(url, name string) (v float64, ok bool) {
	fams, err := promtest.Scrape(url)
	if err != nil {
		return 0, false
	}
	return promtest.Sum(fams, name)
}
