package upstream

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// countingServer counts the connections its clients open.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, func() int) {
	t.Helper()
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	s := httptest.NewUnstartedServer(h)
	s.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			conns[c] = true
			mu.Unlock()
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

func TestUpstreamReusesConnections(t *testing.T) {
	s, count := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		require.Equal(t, []string{"application/json"}, r.Header["Content-Type"], "a JSON body is sent as JSON, whatever the client said")
		require.Empty(t, r.Header.Get("Keep-Alive"), "hop-by-hop headers are not forwarded")
		fmt.Fprintf(w, "%s %s", r.URL.Path, body)
	})
	c := New()
	addr := strings.TrimPrefix(s.URL, "http://")
	hdr := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Keep-Alive": {"timeout=5"}, "Connection": {"keep-alive"}}
	for i := 0; i < 10; i++ {
		resp, err := c.PostJSON(context.Background(), addr, "/v1/x", hdr, []byte(fmt.Sprint(i)), time.Minute)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, fmt.Sprintf("/v1/x %d", i), string(b))
	}
	require.Equal(t, 1, count(), "one kept-alive connection serves every sequential request")
}

func TestUpstreamRetriesAPooledConnectionTheServerClosed(t *testing.T) {
	s, count := countingServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	c := New()
	addr := strings.TrimPrefix(s.URL, "http://")
	for i := 0; i < 2; i++ {
		resp, err := c.PostJSON(context.Background(), addr, "/", nil, nil, time.Minute)
		require.NoError(t, err)
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		s.CloseClientConnections() // the server drops the idle connection
	}
	require.Equal(t, 2, count())
}

func TestUpstreamEarlyCloseDoesNotPoolTheConnection(t *testing.T) {
	release := make(chan struct{})
	s, count := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	c := New()
	addr := strings.TrimPrefix(s.URL, "http://")
	resp, err := c.PostJSON(context.Background(), addr, "/", nil, nil, time.Minute)
	require.NoError(t, err)
	buf := make([]byte, 9)
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close()) // mid-body: the connection is closed, not reused
	c.mu.Lock()
	idle := len(c.idle[addr])
	c.mu.Unlock()
	require.Zero(t, idle)
	require.Equal(t, 1, count())
}

func TestUpstreamTimeoutBoundsTheExchange(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	s, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) { <-block })
	c := New()
	_, err := c.PostJSON(context.Background(), strings.TrimPrefix(s.URL, "http://"), "/", nil, nil, 50*time.Millisecond)
	require.Error(t, err)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())
}

func TestUpstreamCancelClosesTheConnection(t *testing.T) {
	gone, arrived := make(chan struct{}), make(chan struct{})
	s, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
		close(gone)
	})
	c := New()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.PostJSON(ctx, strings.TrimPrefix(s.URL, "http://"), "/", nil, nil, time.Minute)
		errc <- err
	}()
	<-arrived
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not see the request cancelled")
	}
}
