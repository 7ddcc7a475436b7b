package queueproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

func TestAdminListenerIsOffByDefault(t *testing.T) {
	eng := newEngine(t, nil)
	_, admin := startMainAdmin(t, "--engine-url="+eng.URL)
	assert.Empty(t, admin)
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
		// The server closes the connection once the header timeout passes
		// (a read sees EOF or a reset); no deadline is needed here because
		// the timeout is the server's.
		_, err = bufio.NewReader(c).ReadString('\n')
		assert.Error(t, err)
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
