package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// clock is a settable clock for outlier ejections.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// rig is an activator on a fake clock, with its registry, behind an
// httptest server, serving the given services.
type rig struct {
	act *Activator
	reg *prometheus.Registry
	clk *clock
	url string
}

func newRig(t *testing.T, mutate func(*Config), svcs ...ServiceConfig) *rig {
	t.Helper()
	cfg := DefaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	act, err := New(cfg, WithRegisterer(reg), WithStatsStreams(false), WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	clk := &clock{now: time.Unix(1_000_000, 0)}
	act.now = clk.Now // before any revision exists
	require.NoError(t, act.SetServices(svcs))
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)
	return &rig{act: act, reg: reg, clk: clk, url: srv.URL}
}

// oneRevision is service svc (model m, revision m-1) in namespace default.
func oneRevision(routing ...v1alpha1.RoutingPlugin) ServiceConfig {
	return ServiceConfig{Namespace: "default", Name: "svc", Model: "m", Routing: routing,
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "m-1"}}}
}

// postWithin posts a chat body and fails the test if no answer comes within
// limit (a guard against hangs, not a synchronisation).
func postWithin(t *testing.T, url, body string, limit time.Duration) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+PathChat, strings.NewReader(body))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err, "no answer within %s", limit)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// countingBackend answers every request with h and counts them.
func countingBackend(t *testing.T, name string, h http.HandlerFunc) (fleet.Endpoint, *atomic.Int32) {
	var n atomic.Int32
	ep := backend(t, name, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	})
	return ep, &n
}

const engineOverloaded = `{"error":{"message":"the engine is overloaded","type":"server_error","param":null,"code":"overloaded"}}`

func overloaded(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Retry-After", "7")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, engineOverloaded)
}

func wsURL(httpURL string) string { return "ws" + strings.TrimPrefix(httpURL, "http") + PathChat }

// --- 4. WebSocket origins ---

func TestWebSocketOriginCheck(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AllowedOrigins = []string{"https://App.Example.com", "http://localhost:3000"} })
	host := strings.TrimPrefix(h.srv.URL, "http://")
	for _, tc := range []struct {
		origin string // "" = no Origin header
		ok     bool
	}{
		{"", true},               // a program, not a browser
		{"http://" + host, true}, // same origin
		{"HTTP://" + strings.ToUpper(host), true},       // same origin, any case
		{"https://app.example.com", true},               // allowed, case-insensitively
		{"https://APP.EXAMPLE.COM:443", true},           // the default port is no port
		{"http://localhost:3000", true},                 // allowed with its port
		{"https://evil.example.com", false},             // another origin
		{"http://app.example.com", false},               // another scheme is another origin
		{"http://localhost:3001", false},                // another port is another origin
		{"https://app.example.com.evil.com", false},     // not a suffix match
		{"null", false},                                 // an opaque origin (sandboxed frame, file:)
		{"https://evil.example.com/" + host, false},     // the host is not a path
		{"http://" + host + "@evil.example.com", false}, // nor user information
	} {
		t.Run(tc.origin, func(t *testing.T) {
			hdr := http.Header{}
			if tc.origin != "" {
				hdr.Set("Origin", tc.origin)
			}
			conn, resp, err := websocket.DefaultDialer.Dial(wsURL(h.srv.URL), hdr)
			if tc.ok {
				require.NoError(t, err)
				conn.Close()
				return
			}
			require.Error(t, err)
			require.NotNil(t, resp)
			defer resp.Body.Close()
			require.Equal(t, http.StatusForbidden, resp.StatusCode)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			body, _ := io.ReadAll(resp.Body)
			requireOpenAIError(t, body, "origin_not_allowed")
		})
	}
}

func TestWebSocketAnyOriginIsAnExplicitOptIn(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AllowedOrigins = []string{AnyOrigin} })
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(h.srv.URL), http.Header{"Origin": {"https://anywhere.example"}})
	require.NoError(t, err)
	conn.Close()
}

func TestConfigValidatesAllowedOrigins(t *testing.T) {
	for _, ok := range []string{"*", "https://app.example.com", "http://localhost:3000", "https://[::1]:8443", "chrome-extension://abcdef"} {
		cfg := DefaultConfig()
		cfg.AllowedOrigins = []string{ok}
		require.NoError(t, cfg.Validate(), ok)
	}
	for _, bad := range []string{"app.example.com", "https://app.example.com/", "https://app.example.com/x", "https://app.example.com?q",
		"https://*.example.com", "https://u:p@app.example.com", "", "://x", "https://app.example.com#f", "localhost:3000"} {
		cfg := DefaultConfig()
		cfg.AllowedOrigins = []string{bad}
		err := cfg.Validate()
		require.Error(t, err, "%q", bad)
		require.Contains(t, err.Error(), "allowed-origins", "the error names the flag")
	}
}

// --- 5. Fields only the platform sets ---

func TestPlatformFieldsAreRefused(t *testing.T) {
	h := newHarness(t, nil)
	ep, hits := countingBackend(t, "r", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{}`) })
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{ep})
	bodies := map[string]string{}
	for _, f := range PlatformFields() {
		bodies[f] = `{"model":"m","messages":[],"` + f + `":{"remote_host":"169.254.169.254","do_remote_prefill":true}}`
	}
	// As JSON decoders read the key: an escaped spelling is the same key.
	bodies["escaped"] = `{"model":"m","kv_transfer_param\u0073":{"remote_host":"169.254.169.254"}}`
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			resp, b := post(t, h.srv.URL, body)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, string(b))
			requireOpenAIError(t, b, "platform_field")
			var env openai.Envelope
			require.NoError(t, json.Unmarshal(b, &env))
			require.NotNil(t, env.Error.Param)
			require.Contains(t, PlatformFields(), *env.Error.Param, "the error names the field")
			require.Equal(t, openai.TypeInvalidRequest, env.Error.Type)
		})
	}
	require.Zero(t, hits.Load(), "no engine saw a platform field from a client")
	require.Contains(t, PlatformFields(), "kv_transfer_params")

	conn, _, err := websocket.DefaultDialer.Dial(wsURL(h.srv.URL), nil)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.WriteMessage(websocket.TextMessage,
		[]byte(`{"model":"m","request_id":"k","kv_transfer_params":{"remote_host":"10.0.0.1"}}`)))
	_, msg, err := conn.ReadMessage()
	require.NoError(t, err)
	var m struct {
		RequestID string       `json:"request_id"`
		Error     openai.Error `json:"error"`
	}
	require.NoError(t, json.Unmarshal(msg, &m), string(msg))
	require.Equal(t, "k", m.RequestID)
	require.Equal(t, "platform_field", m.Error.Code)
	require.Zero(t, hits.Load())

	resp, b := post(t, h.srv.URL, `{"model":"m","messages":[],"note":"kv_transfer_params is only a word here"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
}

// --- 6. Failing replicas and outlier detection ---

func TestFailingOnlyReplicaAnswersAtOnce(t *testing.T) {
	r := newRig(t, func(c *Config) { c.BufferTimeout = 10 * time.Minute }, oneRevision())
	ep, hits := countingBackend(t, "r", overloaded)
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{ep})
	resp, body := postWithin(t, r.url, `{"model":"m"}`, 30*time.Second)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.JSONEq(t, engineOverloaded, string(body), "the engine's error, passed through")
	require.Equal(t, "7", resp.Header.Get("Retry-After"), "and its headers")
	require.Equal(t, "m-1", resp.Header.Get(RevisionHeader))
	require.EqualValues(t, 1, hits.Load(), "the only replica was tried once; nothing else to try")
	l, _ := r.act.Load(key("m-1"))
	require.Zero(t, l.Buffered)
	require.Zero(t, l.InFlight)
}

func TestUnreachableOnlyReplicaAnswers502AtOnce(t *testing.T) {
	r := newRig(t, func(c *Config) { c.BufferTimeout = 10 * time.Minute }, oneRevision())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := fleet.Endpoint{Name: "dead", Address: ln.Addr().String()}
	require.NoError(t, ln.Close())
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{dead})
	resp, body := postWithin(t, r.url, `{"model":"m"}`, 30*time.Second)
	require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	requireOpenAIError(t, body, "upstream_unavailable")
}

func TestEveryReplicaFailingAnswersWithTheLast(t *testing.T) {
	r := newRig(t, func(c *Config) { c.BufferTimeout = 10 * time.Minute; c.MaxAttempts = 5 }, oneRevision())
	a, aHits := countingBackend(t, "a", overloaded)
	b, bHits := countingBackend(t, "b", func(w http.ResponseWriter, _ *http.Request) {
		openai.WriteError(w, http.StatusBadGateway, openai.Err(openai.TypeServer, "engine_down", "the engine is down"), 0)
	})
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{a, b})
	resp, body := postWithin(t, r.url, `{"model":"m"}`, 30*time.Second)
	require.Contains(t, []int{http.StatusServiceUnavailable, http.StatusBadGateway}, resp.StatusCode)
	require.EqualValues(t, 1, aHits.Load(), "each replica tried once")
	require.EqualValues(t, 1, bHits.Load(), "each replica tried once")
	if resp.StatusCode == http.StatusBadGateway {
		requireOpenAIError(t, body, "engine_down")
	} else {
		require.JSONEq(t, engineOverloaded, string(body))
	}
}

func TestOutlierEjection(t *testing.T) {
	r := newRig(t, nil, oneRevision(v1alpha1.RoutingPlugin{Name: "round-robin"}))
	bad, badHits := countingBackend(t, "a-bad", overloaded)
	good, goodHits := countingBackend(t, "b-good", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{}`) })
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{bad, good})
	labels := map[string]string{"namespace": "default", "service": "svc", "revision": "m-1", "role": "unified"}
	metric := func(name string) float64 {
		v, ok := promtest.Value(r.reg, name, labels)
		require.True(t, ok, name)
		return v
	}
	// Round robin sends every other pick to a-bad; each failure there is
	// retried on b-good, so clients see only successes.
	untilBadHits := func(n int32) {
		t.Helper()
		for i := 0; badHits.Load() < n; i++ {
			require.Less(t, i, 50, "a-bad is picked again")
			resp, body := post(t, r.url, `{"model":"m"}`)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		}
	}
	untilBadHits(5)
	require.Equal(t, 1.0, metric("kvasir_activator_replica_ejections_total"))
	require.Equal(t, 1.0, metric("kvasir_activator_ejected_replicas"))
	before := goodHits.Load()
	for range 10 {
		resp, _ := post(t, r.url, `{"model":"m"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.EqualValues(t, 5, badHits.Load(), "an ejected replica is not picked")
	require.EqualValues(t, before+10, goodHits.Load())

	r.clk.Advance(30 * time.Second) // the first ejection lasts the base time
	require.Equal(t, 0.0, metric("kvasir_activator_ejected_replicas"))
	untilBadHits(10)
	require.Equal(t, 2.0, metric("kvasir_activator_replica_ejections_total"))
	r.clk.Advance(59 * time.Second) // the second lasts twice as long
	require.Equal(t, 1.0, metric("kvasir_activator_ejected_replicas"))
	r.clk.Advance(time.Second)
	require.Equal(t, 0.0, metric("kvasir_activator_ejected_replicas"))
}

func TestOutlierEjectionLengthIsCapped(t *testing.T) {
	r := newRig(t, func(c *Config) {
		c.OutlierConsecutiveFailures = 1
		c.OutlierBaseEjection = time.Minute
		c.OutlierMaxEjection = 90 * time.Second
	}, oneRevision())
	ep, _ := countingBackend(t, "r", overloaded)
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{ep})
	ejected := func() float64 {
		v, _ := promtest.Value(r.reg, "kvasir_activator_ejected_replicas", map[string]string{"namespace": "default"})
		return v
	}
	post(t, r.url, `{"model":"m"}`) // ejected for 1m
	require.Equal(t, 1.0, ejected())
	r.clk.Advance(time.Minute)
	require.Equal(t, 0.0, ejected())
	post(t, r.url, `{"model":"m"}`) // the second: 2m, capped at 90s
	r.clk.Advance(89 * time.Second)
	require.Equal(t, 1.0, ejected())
	r.clk.Advance(time.Second)
	require.Equal(t, 0.0, ejected())
}

// Envoy's panic rule: when every ready replica is ejected, they are picked
// anyway; a request is answered by a replica rather than buffered.
func TestEveryReplicaEjectedIsPickedAnyway(t *testing.T) {
	r := newRig(t, func(c *Config) { c.BufferTimeout = 10 * time.Minute }, oneRevision())
	ep, hits := countingBackend(t, "r", overloaded)
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{ep})
	for i := int32(1); i <= 7; i++ {
		resp, _ := postWithin(t, r.url, `{"model":"m"}`, 30*time.Second)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, i, hits.Load())
	}
	v, _ := promtest.Value(r.reg, "kvasir_activator_ejected_replicas", map[string]string{"revision": "m-1"})
	require.Equal(t, 1.0, v, "one replica may always be ejected")
}

// At most OutlierMaxEjectionPercent of the replicas are ejected at once
// (one always may be).
func TestOutlierMaxEjectionPercent(t *testing.T) {
	r := newRig(t, func(c *Config) { c.OutlierConsecutiveFailures = 1 }, oneRevision(v1alpha1.RoutingPlugin{Name: "round-robin"}))
	a, aHits := countingBackend(t, "a", overloaded)
	b, bHits := countingBackend(t, "b", overloaded)
	c, _ := countingBackend(t, "c", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{}`) })
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{a, b, c})
	for i := 0; aHits.Load() == 0 || bHits.Load() == 0; i++ {
		require.Less(t, i, 20)
		post(t, r.url, `{"model":"m"}`)
	}
	v, _ := promtest.Value(r.reg, "kvasir_activator_ejected_replicas", map[string]string{"revision": "m-1"})
	require.Equal(t, 1.0, v, "10%% of three replicas: only one ejected")
}

func TestBrokenAnswersCountAndSuccessResets(t *testing.T) {
	ejected := func(r *rig) float64 {
		v, _ := promtest.Value(r.reg, "kvasir_activator_ejected_replicas", map[string]string{"revision": "m-1"})
		return v
	}
	t.Run("a stream broken before its end is a failure", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.OutlierConsecutiveFailures = 2 }, oneRevision())
		release := make(chan struct{})
		close(release)
		r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{sseBackend(t, "r", release, true)})
		for range 2 {
			resp, body := post(t, r.url, `{"model":"m","stream":true}`)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Contains(t, string(body), "upstream_failed")
		}
		require.Equal(t, 1.0, ejected(r))
	})
	t.Run("a success resets the count", func(t *testing.T) {
		r := newRig(t, func(c *Config) { c.OutlierConsecutiveFailures = 2 }, oneRevision())
		var n atomic.Int32
		r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r", func(w http.ResponseWriter, req *http.Request) {
			if n.Add(1)%2 == 1 {
				overloaded(w, req)
				return
			}
			_, _ = io.WriteString(w, `{}`)
		})})
		for i := range 6 {
			resp, _ := post(t, r.url, `{"model":"m"}`)
			require.Equal(t, []int{503, 200}[i%2], resp.StatusCode)
		}
		require.Equal(t, 0.0, ejected(r), "never two failures in a row")
	})
}

// A request buffered for capacity with replicas left to try is answered as
// soon as those leave.
func TestBufferedRetryAnsweredWhenUntriedReplicasLeave(t *testing.T) {
	sc := oneRevision(v1alpha1.RoutingPlugin{Name: "round-robin"})
	sc.Revisions[0].ContainerConcurrency = 1
	r := newRig(t, func(c *Config) { c.BufferTimeout = 10 * time.Minute }, sc)
	bad, _ := countingBackend(t, "a-bad", overloaded)
	started, unblock := make(chan struct{}), make(chan struct{})
	busy := backend(t, "b-busy", func(w http.ResponseWriter, _ *http.Request) {
		close(started)
		<-unblock
		_, _ = io.WriteString(w, `{}`)
	})
	defer close(unblock)
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{busy})
	go func() { // holds b-busy's only slot
		resp, err := http.Post(r.url+PathChat, "application/json", strings.NewReader(`{"model":"m"}`))
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{bad, busy})
	type result struct {
		code int
		body []byte
	}
	done := make(chan result, 1)
	go func() {
		resp, body := postWithin(t, r.url, `{"model":"m"}`, 30*time.Second)
		done <- result{resp.StatusCode, body}
	}()
	// a-bad fails it; b-busy is full: it buffers for b-busy ...
	require.Eventually(t, func() bool { l, _ := r.act.Load(key("m-1")); return l.Buffered == 1 }, 10*time.Second, time.Millisecond)
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{bad}) // ... which leaves: nothing left to try
	res := <-done
	require.Equal(t, http.StatusServiceUnavailable, res.code)
	require.JSONEq(t, engineOverloaded, string(res.body))
}

func TestConfigValidatesOutlierDetection(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"outlier-consecutive-failures": func(c *Config) { c.OutlierConsecutiveFailures = -1 },
		"outlier-base-ejection":        func(c *Config) { c.OutlierBaseEjection = 0 },
		"outlier-max-ejection":         func(c *Config) { c.OutlierMaxEjection = time.Second },
		"outlier-max-ejection-percent": func(c *Config) { c.OutlierMaxEjectionPercent = 101 },
	} {
		cfg := DefaultConfig()
		mutate(&cfg)
		err := cfg.Validate()
		require.Error(t, err, name)
		require.Contains(t, err.Error(), name+":")
	}
	cfg := DefaultConfig()
	cfg.OutlierConsecutiveFailures = 0 // off
	require.NoError(t, cfg.Validate())
}

// --- 8. WebSocket request ids ---

func TestWebSocketDuplicateRequestID(t *testing.T) {
	h := newHarness(t, nil)
	gates := []chan struct{}{make(chan struct{}), make(chan struct{})} // the first two calls wait on theirs
	var calls atomic.Int32
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r", func(w http.ResponseWriter, r *http.Request) {
		n := int(calls.Add(1))
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"i\":0}\n\n")
		w.(http.Flusher).Flush()
		if n <= len(gates) {
			<-gates[n-1]
		}
		fmt.Fprint(w, "data: {\"i\":1}\n\ndata: [DONE]\n\n")
	})})
	opened := make([]sync.Once, len(gates))
	open := func(i int) { opened[i].Do(func() { close(gates[i]) }) }
	t.Cleanup(func() { // before the backend's Close, which waits for its handlers
		for i := range gates {
			open(i)
		}
	})
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(h.srv.URL), nil)
	require.NoError(t, err)
	defer conn.Close()
	type message struct {
		RequestID json.RawMessage `json:"request_id"`
		Type      string          `json:"type"`
		I         *int            `json:"i"`
		Error     *openai.Error   `json:"error"`
	}
	read := func() message {
		t.Helper()
		_, raw, err := conn.ReadMessage()
		require.NoError(t, err)
		var m message
		require.NoError(t, json.Unmarshal(raw, &m), string(raw))
		return m
	}
	send := func(msg string) {
		t.Helper()
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(msg)))
	}
	send(`{"model":"m","stream":true,"request_id":"A"}`)
	m := read()
	require.Equal(t, `"A"`, string(m.RequestID))
	require.NotNil(t, m.I, "A is in flight, held by the engine")

	for _, dup := range []string{`"A"`, `"\u0041"`} {
		send(`{"model":"m","stream":true,"request_id":` + dup + `}`)
		m = read()
		require.NotNil(t, m.Error, "a second request under an id in flight is refused")
		require.Equal(t, "duplicate_request_id", m.Error.Code)
		require.Equal(t, dup, string(m.RequestID))
	}
	require.EqualValues(t, 1, calls.Load(), "the duplicates never reached the engine")

	open(0)
	m = read()
	require.Equal(t, 1, *m.I)
	m = read()
	require.Equal(t, "done", m.Type)

	send(`{"model":"m","stream":true,"request_id":"A"}`) // free again after "done"
	m = read()
	require.Nil(t, m.Error)
	require.Equal(t, `"A"`, string(m.RequestID))
	send(`{"model":"m","stream":true,"request_id":"A"}`) // and taken again while that one runs
	m = read()
	require.NotNil(t, m.Error)
	require.Equal(t, "duplicate_request_id", m.Error.Code)
	open(1)
	for _, want := range []string{"chunk", "done"} {
		m = read()
		require.Nil(t, m.Error)
		require.Equal(t, `"A"`, string(m.RequestID))
		if want == "done" {
			require.Equal(t, "done", m.Type)
		}
	}

	send(`{"model":"nope","request_id":"B"}`) // and after an error
	m = read()
	require.Equal(t, "model_not_found", m.Error.Code)
	send(`{"model":"nope","request_id":"B"}`)
	m = read()
	require.Equal(t, "model_not_found", m.Error.Code, "B was free again after its error")
}

// --- 9. One service name in two namespaces ---

func TestMetricsWithOneServiceNameInTwoNamespaces(t *testing.T) {
	svc := func(ns, model string) ServiceConfig {
		return ServiceConfig{Namespace: ns, Name: "llama", Model: model,
			Traffic: []traffic.Target{{Revision: "llama-00001", Percent: 100}}, Revisions: []RevisionConfig{{Name: "llama-00001"}}}
	}
	a, b := svc("team-a", "llama-a"), svc("team-b", "llama-b")
	r := newRig(t, nil, a, b)
	r.act.SetEndpoints(a.Key("llama-00001"), []fleet.Endpoint{okBackend(t, "a")})
	r.act.SetEndpoints(b.Key("llama-00001"), []fleet.Endpoint{okBackend(t, "b")})
	for _, model := range []string{"llama-a", "llama-b"} {
		resp, body := post(t, r.url, `{"model":"`+model+`"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	}
	fams, err := r.reg.Gather()
	require.NoError(t, err, "one service name in two namespaces is two series, not a collision")
	seen := map[string]map[string]bool{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "namespace" {
					if seen[f.GetName()] == nil {
						seen[f.GetName()] = map[string]bool{}
					}
					seen[f.GetName()][l.GetValue()] = true
				}
			}
		}
	}
	for _, name := range []string{"kvasir_activator_requests_total", "kvasir_activator_request_duration_seconds",
		"kvasir_activator_buffered_requests", "kvasir_activator_in_flight_requests",
		"kvasir_activator_replica_ejections_total", "kvasir_activator_ejected_replicas"} {
		require.Equal(t, map[string]bool{"team-a": true, "team-b": true}, seen[name], name)
	}
	for _, ns := range []string{"team-a", "team-b"} {
		v, ok := promtest.Value(r.reg, "kvasir_activator_requests_total",
			map[string]string{"namespace": ns, "service": "llama", "revision": "llama-00001", "code": "200"})
		require.True(t, ok, ns)
		require.Equal(t, 1.0, v, ns)
	}
}

// WebSocket messages are held within the same limits as HTTP bodies: the
// body memory budget, the size limit and the body read timeout. A message
// past one is refused with an error and the connection closed, since a
// message read in part leaves it unusable.
func TestWebSocketMessagesAreBoundedLikeBodies(t *testing.T) {
	type closed struct {
		code   int
		reason string
	}
	dial := func(t *testing.T, h *harness, bufSize int) *websocket.Conn {
		d := websocket.Dialer{WriteBufferSize: bufSize}
		conn, _, err := d.Dial(wsURL(h.srv.URL), nil)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	// readUntilClose returns the error codes sent and how the server closed.
	readUntilClose := func(t *testing.T, conn *websocket.Conn) ([]string, closed) {
		var codes []string
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(time.Minute)))
		for {
			_, raw, err := conn.ReadMessage()
			if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
				return codes, closed{ce.Code, ce.Text}
			}
			require.NoError(t, err, "the server closes the connection before the client's deadline")
			var m struct {
				Error *openai.Error `json:"error"`
			}
			require.NoError(t, json.Unmarshal(raw, &m))
			require.NotNil(t, m.Error, string(raw))
			codes = append(codes, m.Error.Code)
		}
	}
	big := `{"model":"m","prompt":"` + strings.Repeat("x", 2<<20) + `"}`

	t.Run("over the budget", func(t *testing.T) {
		h := newHarness(t, nil)
		h.act.bodies.Budget = httpserver.NewBudget(1 << 20)
		conn := dial(t, h, 0)
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(big)))
		codes, c := readUntilClose(t, conn)
		require.Equal(t, []string{"server_overloaded"}, codes)
		require.Equal(t, closed{websocket.CloseTryAgainLater, "server_overloaded"}, c)
		require.Zero(t, h.act.bodies.Budget.Used(), "the refused message holds nothing")
	})
	t.Run("over the size limit", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxBodyBytes = 1 << 20 })
		conn := dial(t, h, 0)
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(big)))
		codes, c := readUntilClose(t, conn)
		require.Equal(t, []string{"request_too_large"}, codes)
		require.Equal(t, closed{websocket.CloseMessageTooBig, "request_too_large"}, c)
		require.Zero(t, h.act.bodies.Budget.Used())
	})
	t.Run("too slow", func(t *testing.T) {
		h := newHarness(t, nil)
		h.act.bodies.Timeout = 200 * time.Millisecond
		conn := dial(t, h, 1024) // a small buffer: the first frames go out at once
		w, err := conn.NextWriter(websocket.TextMessage)
		require.NoError(t, err)
		_, err = w.Write([]byte(big[:4096])) // and the message never ends
		require.NoError(t, err)
		codes, c := readUntilClose(t, conn)
		require.Equal(t, []string{"request_body_timeout"}, codes)
		require.Equal(t, closed{websocket.ClosePolicyViolation, "request_body_timeout"}, c)
		require.Zero(t, h.act.bodies.Budget.Used())
	})
	t.Run("an idle connection between messages is fine", func(t *testing.T) {
		h := newHarness(t, nil)
		h.act.bodies.Timeout = 50 * time.Millisecond
		h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{okBackend(t, "r")})
		conn := dial(t, h, 0)
		time.Sleep(200 * time.Millisecond) // idle for longer than the body timeout: not a slow message
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"model":"m","request_id":"a"}`)))
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(time.Minute)))
		_, raw, err := conn.ReadMessage()
		require.NoError(t, err)
		require.NotContains(t, string(raw), `"error"`)
	})
}
