package upstream

import (
	"bufio"
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

// rawServer answers each request on its connections with reply(n), n
// counting requests from 0 across connections, and counts connections.
func rawServer(t *testing.T, reply func(n int, req *http.Request) string) (addr string, conns func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	nconns, nreqs := 0, 0
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			nconns++
			mu.Unlock()
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					mu.Lock()
					n := nreqs
					nreqs++
					mu.Unlock()
					if _, err := io.WriteString(c, reply(n, req)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return nconns }
}

func post(t *testing.T, c *Client, addr string, hdr http.Header) string {
	t.Helper()
	resp, err := c.PostJSON(context.Background(), addr, "/v1/completions", hdr, []byte(`{}`), time.Minute)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return string(b)
}

// The defect of issue 11: an interim 100 Continue was taken for the final
// response, and the real answer stayed on the pooled connection for the
// next request to read.
func TestUpstreamSkipsInterimResponses(t *testing.T) {
	addr, conns := rawServer(t, func(n int, _ *http.Request) string {
		body := fmt.Sprintf("answer-%d", n)
		return "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" +
			fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	})
	c := New()
	for i := range 3 {
		require.Equal(t, fmt.Sprintf("answer-%d", i), post(t, c, addr, nil), "each request reads its own answer")
	}
	require.Equal(t, 1, conns(), "interim responses do not spoil the connection")
}

func TestUpstreamRefusesEndlessInterimResponses(t *testing.T) {
	addr, _ := rawServer(t, func(int, *http.Request) string {
		return strings.Repeat("HTTP/1.1 102 Processing\r\n\r\n", maxInterim+1) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
	})
	_, err := New().PostJSON(context.Background(), addr, "/", nil, nil, time.Minute)
	require.ErrorContains(t, err, "interim")
}

func TestUpstreamDoesNotForwardExpect(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	s, count := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Expect"))
		mu.Unlock()
		b, _ := io.ReadAll(r.Body) // net/http answers 100 Continue here when asked to
		fmt.Fprintf(w, "%s", b)
	})
	c := New()
	addr := strings.TrimPrefix(s.URL, "http://")
	for _, body := range []string{`{"max_tokens":9}`, `{"max_tokens":2}`} {
		resp, err := c.PostJSON(context.Background(), addr, "/", http.Header{"Expect": {"100-continue"}}, []byte(body), time.Minute)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, body, string(b))
	}
	require.Equal(t, []string{"", ""}, seen, "Expect is answered at the proxy, never forwarded")
	require.Equal(t, 1, count())
}

// A response read to its end with more bytes behind it on the connection
// (a broken server) must not be pooled: the next request would read them.
func TestUpstreamDoesNotPoolAConnectionWithBytesLeft(t *testing.T) {
	addr, conns := rawServer(t, func(n int, _ *http.Request) string {
		body := fmt.Sprintf("answer-%d", n)
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body) +
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
	})
	c := New()
	require.Equal(t, "answer-0", post(t, c, addr, nil))
	require.Equal(t, "answer-1", post(t, c, addr, nil), "the next request never reads the stray response")
	require.Equal(t, 2, conns(), "the connection with bytes left was closed, not pooled")
}
