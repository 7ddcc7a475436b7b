package queueproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
)

// startMainAdmin runs Main's body with args and returns the public and the
// admin address ("" when the admin listener is off).
func startMainAdmin(t *testing.T, args ...string) (public, admin string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	type addrs struct{ public, admin net.Addr }
	got := make(chan addrs, 1)
	errs := make(chan error, 1)
	logs := newTestWriter(t)
	go func() {
		errs <- run(ctx, append([]string{"--port=0", "--pod-name=pod-1", "--drain-quiet-period=0s"}, args...), logs,
			func(p, a net.Addr) { got <- addrs{p, a} }, false)
	}()
	select {
	case a := <-got:
		t.Cleanup(func() { cancel(); require.NoError(t, <-errs) })
		if a.admin == nil {
			return a.public.String(), ""
		}
		return a.public.String(), a.admin.String()
	case err := <-errs:
		cancel()
		t.Fatalf("Main returned early: %v", err)
	}
	panic("unreachable")
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// Off unless asked for. (Cancelled right after it started, too: a
// queue-proxy told to stop at once stops, which it did not while its
// server's Shutdown could run before its Serve.)
func TestAdminListenerIsOffByDefault(t *testing.T) {
	eng := newEngine(t, nil)
	_, admin := startMainAdmin(t, "--engine-url="+eng.URL)
	assert.Empty(t, admin)
}

// The admin listener closes with the queue-proxy.
func TestAdminListenerClosesOnExit(t *testing.T) {
	eng := newEngine(t, nil)
	ctx, cancel := context.WithCancel(t.Context())
	got := make(chan net.Addr, 1)
	errs := make(chan error, 1)
	go func() {
		errs <- run(ctx, []string{"--port=0", "--pod-name=p", "--drain-quiet-period=0s", "--engine-url=" + eng.URL,
			"--admin-addr=127.0.0.1:0"}, newTestWriter(t), func(_, a net.Addr) { got <- a }, false)
	}()
	admin := recv(t, got, "the admin address")
	code, _ := getBody(t, "http://"+admin.String()+"/healthz")
	require.Equal(t, http.StatusOK, code)
	cancel()
	require.NoError(t, recv(t, errs, "run's return"))
	_, err := net.Dial("tcp", admin.String())
	assert.Error(t, err, "nothing listens there any more")
}

func TestAdminListenerServesMetricsHealthzAndPprof(t *testing.T) {
	var enginePaths []string
	pathsSeen := make(chan string, 16)
	eng := newEngine(t, map[string]http.HandlerFunc{
		"/debug/": func(w http.ResponseWriter, r *http.Request) {
			pathsSeen <- r.URL.Path
			http.NotFound(w, r)
		},
	})
	public, admin := startMainAdmin(t, "--engine-url="+eng.URL, "--admin-addr=127.0.0.1:0")
	require.NotEmpty(t, admin)

	code, body := getBody(t, "http://"+admin+"/metrics")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "kvasir_queueproxy_in_flight", "the queue-proxy's own families")
	_, own := getBody(t, "http://"+public+MetricsPath)
	assert.Equal(t, familyNames(own), familyNames(body), "the same registry as /kvasir/metrics")

	code, body = getBody(t, "http://"+admin+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "ok\n", body)
	code, body = getBody(t, "http://"+admin+"/debug/pprof/cmdline")
	assert.Equal(t, http.StatusOK, code)
	assert.NotEmpty(t, body)

	// The public port does not serve pprof: the path is the engine's.
	code, _ = getBody(t, "http://"+public+"/debug/pprof/cmdline")
	assert.Equal(t, http.StatusNotFound, code)
	enginePaths = append(enginePaths, recv(t, pathsSeen, "the engine's request"))
	assert.Equal(t, []string{"/debug/pprof/cmdline"}, enginePaths)
}

func familyNames(exposition string) []string {
	var names []string
	for line := range strings.Lines(exposition) {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names = append(names, strings.Fields(name)[0])
		}
	}
	return names
}

func TestAdminListenerHostile(t *testing.T) {
	eng := newEngine(t, nil)
	_, admin := startMainAdmin(t, "--engine-url="+eng.URL, "--admin-addr=127.0.0.1:0",
		"--max-header-bytes=4096", "--header-read-timeout=200ms")

	t.Run("headers over the limit get 431", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "http://"+admin+"/metrics", nil)
		require.NoError(t, err)
		req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	})
	t.Run("a slow header is cut", func(t *testing.T) {
		c, err := net.Dial("tcp", admin)
		require.NoError(t, err)
		defer c.Close()
		_, err = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n") // never ends
		require.NoError(t, err)
		// The server closes the connection once the header timeout passes:
		// the read sees EOF or a reset, never an answer. (The deadline only
		// guards against a hang.)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)))
		_, err = bufio.NewReader(c).ReadString('\n')
		require.Error(t, err)
		var ne net.Error
		assert.False(t, errors.As(err, &ne) && ne.Timeout(), "cut by the server, not by the guard: %v", err)
	})
	t.Run("a profile longer than the cap is refused", func(t *testing.T) {
		for _, path := range []string{"/debug/pprof/trace?seconds=100000", "/debug/pprof/profile?seconds=61"} {
			code, body := getBody(t, "http://"+admin+path)
			assert.Equal(t, http.StatusBadRequest, code, body)
		}
	})
	t.Run("writes are refused", func(t *testing.T) {
		resp, err := http.Post("http://"+admin+"/metrics", "text/plain", strings.NewReader("x"))
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	})
}

func TestAdminAddrInUseFailsStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	eng := newEngine(t, nil)
	err = run(t.Context(), []string{"--port=0", "--pod-name=p", "--engine-url=" + eng.URL, "--admin-addr=" + taken.Addr().String()},
		newTestWriter(t), nil, false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "--admin-addr")
}

// Connections past AdminMaxConnections are answered 503 and closed.
func TestAdminListenerCapsConnections(t *testing.T) {
	eng := newEngine(t, nil)
	_, admin := startMainAdmin(t, "--engine-url="+eng.URL, "--admin-addr=127.0.0.1:0")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range httpserver.AdminMaxConnections {
		c, err := net.Dial("tcp", admin)
		require.NoError(t, err)
		held = append(held, c)
		// A whole request and its answer: the connection was accepted
		// and holds its place, kept alive.
		_, err = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	c, err := net.Dial("tcp", admin)
	require.NoError(t, err)
	defer c.Close()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}
