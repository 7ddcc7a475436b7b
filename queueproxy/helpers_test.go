package queueproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

const (
	// waitFor bounds every wait of a test so that a bug fails it instead of hanging.
	waitFor = 10 * time.Second
	// tick is the polling period of require.Eventually.
	tick = 5 * time.Millisecond
)

// Chunks of a chat completion stream as vLLM sends them.
const (
	chunkRole  = `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`
	chunkHel   = `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}]}`
	chunkLo    = `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"}}]}`
	chunkStop  = `{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`
	chunkUsage = `{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":8}}}`

	completionBody = `{"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":4}}}`

	vllmMetrics = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
`
)

// engine is a fake inference engine: /health answers health, /metrics
// answers metrics, other paths go to the handlers given.
type engine struct {
	*httptest.Server
	health atomic.Int32
}

func newEngine(t *testing.T, handlers map[string]http.HandlerFunc) *engine {
	t.Helper()
	e := &engine{}
	e.health.Store(http.StatusOK)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(e.health.Load()))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, vllmMetrics)
	})
	for pattern, h := range handlers {
		mux.HandleFunc(pattern, h)
	}
	e.Server = httptest.NewServer(mux)
	t.Cleanup(e.Close)
	return e
}

// testConfig is the flag defaults with fast loops, then args.
func testConfig(t testing.TB, engineURL string, args ...string) Config {
	t.Helper()
	var cfg Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	base := []string{
		"--engine-url=" + engineURL, "--pod-name=pod-1",
		"--probe-interval=10ms", "--stats-interval=10ms", "--scrape-interval=50ms",
		"--drain-quiet-period=0s",
	}
	require.NoError(t, fs.Parse(append(base, args...)))
	return cfg
}

// proxy is a Proxy under test, served on a loopback listener.
type proxy struct {
	*Proxy
	srv *listening
}

// listening is where a Proxy under test listens.
type listening struct {
	URL    string // http://127.0.0.1:port
	client *http.Client
}

// Client is a client of the proxy with its own keep-alive connections.
func (s *listening) Client() *http.Client { return s.client }

// listen serves p on a loopback port until the test ends.
func listen(t testing.TB, p *Proxy) *listening {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Serve(ln)
	}()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		_ = p.Close()
		<-done
	})
	return &listening{URL: "http://" + ln.Addr().String(), client: &http.Client{Transport: tr}}
}

// newProxy starts a proxy in front of engineURL; with run set, its Run loop
// goes until the test ends.
func newProxy(t *testing.T, engineURL string, run bool, args ...string) *proxy {
	t.Helper()
	p, err := New(testConfig(t, engineURL, args...), slog.New(slog.NewTextHandler(newTestWriter(t), &slog.HandlerOptions{Level: slog.LevelDebug})))
	require.NoError(t, err)
	srv := listen(t, p)
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = p.Run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-done })
	}
	return &proxy{Proxy: p, srv: srv}
}

// testWriter sends logs to t.Log until the test's cleanup: a goroutine of
// the server may still log after it (fasthttp's workers log a connection's
// error before they close it, and Close does not wait for them), and t.Log
// after the test ends panics.
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func newTestWriter(t *testing.T) *testWriter {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// post sends a JSON body to the proxy.
func (p *proxy) post(t *testing.T, ctx context.Context, path, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.srv.URL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.srv.Client().Do(req)
	require.NoError(t, err)
	return resp
}

// result is the outcome of an asynchronous request.
type result struct {
	code int
	body string
	err  error
}

// postAsync sends a JSON body from another goroutine and reports the
// outcome once the response body is read.
func (p *proxy) postAsync(ctx context.Context, path, body string) <-chan result {
	out := make(chan result, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.srv.URL+path, strings.NewReader(body))
		if err != nil {
			out <- result{err: err}
			return
		}
		resp, err := p.srv.Client().Do(req)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		out <- result{code: resp.StatusCode, body: string(b), err: err}
	}()
	return out
}

func (p *proxy) get(t *testing.T, path string) *http.Response {
	t.Helper()
	resp, err := p.srv.Client().Get(p.srv.URL + path)
	require.NoError(t, err)
	return resp
}

func (p *proxy) readyCode(t *testing.T) int {
	t.Helper()
	resp := p.get(t, ReadyPath)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// testCtx is a context that ends with the test or after waitFor.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// readEvent reads one SSE event (through its blank line).
func readEvent(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var ev strings.Builder
	for {
		line, err := r.ReadString('\n')
		require.NoError(t, err, "reading event, got so far %q", ev.String())
		ev.WriteString(line)
		if line == "\n" {
			return ev.String()
		}
	}
}

// writeEvent sends one SSE event and flushes it.
func writeEvent(w http.ResponseWriter, data string) {
	_, _ = io.WriteString(w, "data: "+data+"\n\n")
	_ = http.NewResponseController(w).Flush()
}

// startStream answers an SSE request with its headers.
func startStream(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	_ = http.NewResponseController(w).Flush()
}

// wantsUsage reports whether a request body asks for stream usage.
func wantsUsage(t *testing.T, body []byte) bool {
	var req struct {
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	require.NoError(t, json.Unmarshal(body, &req))
	return req.StreamOptions.IncludeUsage
}

// recv takes one value from ch or fails the test.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// decodeError reads an OpenAI error body.
func decodeError(t *testing.T, resp *http.Response) openai.Error {
	t.Helper()
	defer resp.Body.Close()
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var env openai.Envelope
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&env))
	return env.Error
}
