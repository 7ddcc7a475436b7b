package activator

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/testing/hostile"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// simRig is an activator on a FastServer with the given limits, in front of
// one simulator with its real (slow) physics, serving model "m".
type simRig struct {
	act    *Activator
	addr   string
	engine string // the simulator's URL
}

func newSimRig(t *testing.T, limits httpserver.Limits, mutate func(*sim.Config)) *simRig {
	t.Helper()
	engine := simtest.Start(t, simtest.Config(func(c *sim.Config) {
		c.ZeroLatency = false
		c.Model = "m"
		if mutate != nil {
			mutate(c)
		}
	}))
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false),
		WithLimits(limits, httpserver.NewBudget(limits.BodyBudget)))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	require.NoError(t, act.SetServices([]ServiceConfig{{Namespace: "default", Name: "svc", Model: "m",
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "m-1"}}}}))
	act.SetEndpoints(key("m-1"), []fleet.Endpoint{{Name: "sim", Address: strings.TrimPrefix(engine, "http://")}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httpserver.NewFast(act.FastHandler(), limits, nil)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &simRig{act: act, addr: ln.Addr().String(), engine: engine}
}

// running is the simulator's vllm:num_requests_running.
func (r *simRig) running() float64 {
	v, _ := hostile.Gauge(r.engine+"/metrics", "vllm:num_requests_running")
	return v
}

func (r *simRig) inFlight() int {
	l, _ := r.act.Load(key("m-1"))
	return l.InFlight
}

func request(path, body string, extra ...string) string {
	return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + strings.Join(extra, "") +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// A client that leaves cancels the engine's work: the engine's running
// requests go back to 0 within a second, for a request that is not
// streamed (fasthttp gives no sign of the client: the activator looks at
// its connection while it waits on the replica) and for a stream (the
// write fails, or the wait between events looks), whether the client
// closes or only half-closes its connection.
func TestClientDisconnectCancelsTheEngine(t *testing.T) {
	long := `{"model":"m","prompt":"hello","max_tokens":5000,"ignore_eos":true`
	for _, tc := range []struct {
		name   string
		body   string
		stream bool
		half   bool
	}{
		{"whole answer", long + `}`, false, false},
		{"whole answer, half-closed", long + `}`, false, true},
		{"stream", long + `,"stream":true}`, true, false},
		{"stream, half-closed", long + `,"stream":true}`, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSimRig(t, httpserver.DefaultLimits(), nil)
			c, err := net.Dial("tcp", r.addr)
			require.NoError(t, err)
			defer c.Close()
			_, err = io.WriteString(c, request(PathCompletions, tc.body))
			require.NoError(t, err)
			if tc.stream {
				require.NoError(t, c.SetReadDeadline(time.Now().Add(30*time.Second)))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				_, err = resp.Body.Read(make([]byte, 64))
				require.NoError(t, err, "the stream has begun")
			}
			require.Eventually(t, func() bool { return r.running() == 1 }, 10*time.Second, 5*time.Millisecond)
			if tc.half {
				require.NoError(t, c.(*net.TCPConn).CloseWrite())
			} else {
				require.NoError(t, c.Close())
			}
			require.Eventually(t, func() bool { return r.running() == 0 }, time.Second, 5*time.Millisecond,
				"the engine stops within a second of the client leaving")
			require.Eventually(t, func() bool { return r.inFlight() == 0 }, time.Second, 5*time.Millisecond)
		})
	}
}

// A client that leaves while its request waits for a replica (buffering at
// zero) leaves the queue within a second.
func TestClientDisconnectLeavesTheQueue(t *testing.T) {
	h := newHarness(t, nil)
	c, err := net.Dial("tcp", strings.TrimPrefix(h.srv.URL, "http://"))
	require.NoError(t, err)
	_, err = io.WriteString(c, request(PathChat, `{"model":"m","messages":[]}`))
	require.NoError(t, err)
	require.Equal(t, key("m-1"), <-h.demand)
	l, _ := h.act.Load(key("m-1"))
	require.Equal(t, 1, l.Buffered)
	require.NoError(t, c.Close())
	require.Eventually(t, func() bool {
		l, _ := h.act.Load(key("m-1"))
		return l.Buffered == 0
	}, time.Second, 5*time.Millisecond)
}

// The activator's listener faces the hostile-client suite, in front of a
// simulator.
func TestHostileClients(t *testing.T) {
	l := httpserver.DefaultLimits()
	l.ReadHeaderTimeout, l.BodyReadTimeout, l.WriteTimeout, l.MaxHeaderBytes = time.Second, time.Second, 500*time.Millisecond, 8192
	r := newSimRig(t, l, func(c *sim.Config) {
		c.ZeroLatency = true
		c.MaxModelLen, c.KVBlocks, c.WriteTimeout = 1_000_000, 70_000, 10*time.Minute
	})
	hostile.Run(t, hostile.Target{
		Addr: r.addr,
		Path: PathCompletions,
		Body: func(maxTokens int, stream bool) string {
			if maxTokens < 0 {
				maxTokens = 900_000
			}
			return `{"model":"m","prompt":"hello","max_tokens":` + strconv.Itoa(maxTokens) + `,"stream":` + strconv.FormatBool(stream) + `}`
		},
		MaxHeaderBytes: 8192,
		Idle:           func() bool { return r.inFlight() == 0 },
	})
}

// Hostile framing the suite does not cover: an HTTP/1.0 client gets a
// stream it can read (no chunks, the end of the body is the end of the
// connection); a duplicated Content-Length and a malformed chunked body
// are answered 400 and their connection closed; two requests sent at
// once on one connection get their own answers in order.
func TestHostileFraming(t *testing.T) {
	r := newSimRig(t, httpserver.DefaultLimits(), func(c *sim.Config) { c.ZeroLatency = true })
	dial := func(t *testing.T) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", r.addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
		return c, bufio.NewReader(c)
	}
	body := func(stream bool) string {
		return `{"model":"m","prompt":"hi","max_tokens":3,"stream":` + strconv.FormatBool(stream) + `}`
	}
	t.Run("HTTP/1.0 stream", func(t *testing.T) {
		c, br := dial(t)
		req := strings.Replace(request(PathCompletions, body(true)), "HTTP/1.1", "HTTP/1.0", 1)
		_, err := io.WriteString(c, req)
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Empty(t, resp.TransferEncoding, "no chunks for an HTTP/1.0 client")
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Contains(t, string(b), "data: [DONE]")
	})
	t.Run("HTTP/1.0 whole answer", func(t *testing.T) {
		c, br := dial(t)
		_, err := io.WriteString(c, strings.Replace(request(PathCompletions, body(false)), "HTTP/1.1", "HTTP/1.0", 1))
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Contains(t, string(b), `"usage"`)
	})
	t.Run("duplicated Content-Length", func(t *testing.T) {
		c, br := dial(t)
		b := body(false)
		_, err := io.WriteString(c, "POST "+PathCompletions+" HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(b))+
			"\r\nContent-Length: 2\r\n\r\n"+b)
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		_, _ = io.ReadAll(resp.Body)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		rest, _ := io.ReadAll(br)
		require.Empty(t, rest, "the connection is closed")
		require.Zero(t, r.inFlight())
	})
	t.Run("malformed chunked body", func(t *testing.T) {
		c, br := dial(t)
		_, err := io.WriteString(c, "POST "+PathCompletions+" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		_, _ = io.ReadAll(resp.Body)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		rest, _ := io.ReadAll(br)
		require.Empty(t, rest, "the connection is closed")
	})
	t.Run("pipelined stream and whole answer", func(t *testing.T) {
		c, br := dial(t)
		_, err := io.WriteString(c, request(PathCompletions, body(true))+request(PathCompletions, body(false)))
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Contains(t, string(b), "data: [DONE]")
		resp, err = http.ReadResponse(br, nil)
		require.NoError(t, err)
		b, err = io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Contains(t, string(b), `"usage"`)
	})
}
