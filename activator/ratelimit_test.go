package activator

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	tenantkeys "github.com/kvasir-serving/kvasir/pkg/tenant"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

const rlKey = "sk-limited-0123456789"

// recBackend is a memory backend that tells what was reserved and given
// back, so a test can wait for a request's settlement.
type recBackend struct {
	*ratelimit.Memory
	mu      sync.Mutex
	takes   []ratelimit.Cost
	returns chan ratelimit.Cost
}

func newRecBackend() *recBackend {
	return &recBackend{Memory: ratelimit.NewMemory(nil), returns: make(chan ratelimit.Cost, 64)}
}

func (b *recBackend) Take(ctx context.Context, key string, l ratelimit.Limits, c ratelimit.Cost, slot string) (ratelimit.Outcome, error) {
	o, err := b.Memory.Take(ctx, key, l, c, slot)
	if o.Allowed {
		b.mu.Lock()
		b.takes = append(b.takes, c)
		b.mu.Unlock()
	}
	return o, err
}

func (b *recBackend) Return(ctx context.Context, key string, l ratelimit.Limits, refund ratelimit.Cost, slot string) error {
	err := b.Memory.Return(ctx, key, l, refund, slot)
	b.returns <- refund
	return err
}

// lastTake is the cost of the last allowed reservation.
func (b *recBackend) lastTake(t *testing.T) ratelimit.Cost {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	require.NotEmpty(t, b.takes)
	return b.takes[len(b.takes)-1]
}

// refund waits for the next settlement (a test's request ends after its
// answer reached the client).
func (b *recBackend) refund(t *testing.T) ratelimit.Cost {
	t.Helper()
	select {
	case c := <-b.returns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the request was never settled")
		return ratelimit.Cost{}
	}
}

// failingBackend fails every call, as a Redis that is down.
type failingBackend struct{}

func (failingBackend) Take(context.Context, string, ratelimit.Limits, ratelimit.Cost, string) (ratelimit.Outcome, error) {
	return ratelimit.Outcome{}, errors.New("connection refused")
}

func (failingBackend) Return(context.Context, string, ratelimit.Limits, ratelimit.Cost, string) error {
	return errors.New("connection refused")
}

// rlRig is an activator with a rate limiter, serving model llama (LoRA
// adapter llama-sql) from engine to tenant "team" (key rlKey) with rules.
type rlRig struct {
	act *Activator
	reg *prometheus.Registry
	url string
}

func newRLRig(t *testing.T, store ratelimit.Backend, mode ratelimit.FailMode, engine http.HandlerFunc, rules ...LimitRule) *rlRig {
	t.Helper()
	reg := prometheus.NewRegistry()
	lim, err := ratelimit.New(ratelimit.Config{Backend: store, FailMode: mode, Registerer: reg})
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.MaxAttempts, cfg.BufferTimeout = 1, 200*time.Millisecond
	act, err := New(cfg, WithRegisterer(reg), WithStatsStreams(false), WithRateLimiter(lim))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	require.NoError(t, act.SetServices([]ServiceConfig{
		{Namespace: "default", Name: "llama", Model: "llama", LoRAAdapters: []string{"llama-sql"},
			Traffic:   []traffic.Target{{Revision: "l-1", Percent: 100}, {Revision: "l-2", Tag: "canary"}},
			Revisions: []RevisionConfig{{Name: "l-1"}, {Name: "l-2"}}},
		{Namespace: "default", Name: "free", Model: "free",
			Traffic: []traffic.Target{{Revision: "f-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "f-1"}}},
		{Namespace: "default", Name: "gone", Model: "gone",
			Traffic: []traffic.Target{{Revision: "g-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "g-1"}}},
	}))
	require.NoError(t, act.SetTenants([]TenantConfig{{Namespace: "default", Name: "team",
		Keys: [][32]byte{tenantkeys.Digest(rlKey)}, Priority: v1alpha1.PriorityStandard, Weight: 1,
		Models: []string{"*"}, Limits: rules}}))
	for _, rev := range []struct{ svc, rev string }{{"llama", "l-1"}, {"llama", "l-2"}, {"free", "f-1"}} {
		act.SetEndpoints(fleet.Key{Namespace: "default", Service: rev.svc, Revision: rev.rev}, []fleet.Endpoint{backend(t, rev.rev, engine)})
	}
	// A replica that refuses connections: dispatch fails before any engine.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	ln.Close()
	act.SetEndpoints(fleet.Key{Namespace: "default", Service: "gone", Revision: "g-1"}, []fleet.Endpoint{{Name: "dead", Address: dead}})
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httpserver.NewFast(act.FastHandler(), httpserver.DefaultLimits(), nil)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return &rlRig{act: act, reg: reg, url: "http://" + ln.Addr().String()}
}

func (r *rlRig) post(t *testing.T, body string, hdr ...[2]string) (*http.Response, []byte) {
	t.Helper()
	return (&authRig{url: r.url}).do(t, http.MethodPost, PathChat, body, append([][2]string{bearer(rlKey)}, hdr...))
}

func (r *rlRig) rejected(reason string) float64 {
	v, _ := promtest.Value(r.reg, "kvasir_tenant_rejected_total",
		map[string]string{"namespace": "default", "tenant": "team", "model": "llama", "reason": reason})
	return v
}

// Engines as a queue-proxy passes them on: usage in the body, and the
// queue-proxy's own in Kvasir-Usage (header, or trailer on a stream).
const rlBodyUsage = `{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],` +
	`"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}`

func wholeEngine(usage ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		for _, u := range usage {
			w.Header().Add(openai.UsageHeader, u)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, rlBodyUsage)
	}
}

const rlContent = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"

// streamEngine sends events content events, [DONE], and trailer as the
// Kvasir-Usage trailer (none when empty).
func streamEngine(events int, trailer string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Trailer", openai.UsageHeader)
		for range events {
			_, _ = io.WriteString(w, rlContent)
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
		if trailer != "" {
			w.Header().Set(openai.UsageHeader, trailer)
		}
	}
}

func chatBody(extra string) string {
	return `{"model":"llama","messages":[{"role":"user","content":"hello there, how are you?"}]` + extra + `}`
}

func requireLimitHeaders(t *testing.T, h http.Header, requests, tokens bool) {
	t.Helper()
	for _, name := range []string{ratelimit.HeaderLimitRequests, ratelimit.HeaderRemainingRequests, ratelimit.HeaderResetRequests} {
		require.Equal(t, requests, h.Get(name) != "", "%s in %v", name, h)
	}
	for _, name := range []string{ratelimit.HeaderLimitTokens, ratelimit.HeaderRemainingTokens, ratelimit.HeaderResetTokens} {
		require.Equal(t, tokens, h.Get(name) != "", "%s in %v", name, h)
	}
	require.Empty(t, h.Values(openai.UsageHeader), "Kvasir-Usage never reaches a client")
}

func requireRateLimitError(t *testing.T, resp *http.Response, body []byte, typ, inMessage string) {
	t.Helper()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, string(body))
	var env openai.Envelope
	require.NoError(t, json.Unmarshal(body, &env), string(body))
	require.Equal(t, "rate_limit_exceeded", env.Error.Code)
	require.Equal(t, typ, env.Error.Type)
	require.Contains(t, env.Error.Message, inMessage)
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After in whole seconds")
	require.GreaterOrEqual(t, secs, 1)
	ms, err := strconv.Atoi(resp.Header.Get("retry-after-ms"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, ms, 1)
	require.LessOrEqual(t, ms, secs*1000)
}

func TestRateLimitAnswers(t *testing.T) {
	type step struct {
		body   string
		code   int
		typ    string // of a 429
		inMsg  string // of a 429
		reason string // counted in kvasir_tenant_rejected_total
	}
	for _, tc := range []struct {
		name             string
		limits           ratelimit.Limits
		usage            string // the queue-proxy's measure of each answer
		steps            []step
		requests, tokens bool // which x-ratelimit-* the answers carry
	}{
		{"requests per minute", ratelimit.Limits{RequestsPerMinute: 2}, "prompt=7, completion=3", []step{
			{body: chatBody(""), code: 200},
			{body: chatBody(""), code: 200},
			{body: chatBody(""), code: 429, typ: "requests", inMsg: "Rate limit reached for model `llama` on requests per min (RPM): Limit 2", reason: rejectRateLimit},
		}, true, false},
		{"tokens per minute", ratelimit.Limits{TokensPerMinute: 250}, "prompt=20, completion=100", []step{
			{body: chatBody(`,"max_tokens":100`), code: 200},
			{body: chatBody(`,"max_tokens":100`), code: 200},
			{body: chatBody(`,"max_tokens":100`), code: 429, typ: "tokens", inMsg: "on tokens per min (TPM): Limit 250", reason: rejectRateLimit},
		}, false, true},
		{"output tokens: the default output", ratelimit.Limits{RequestsPerMinute: 100, OutputTokensPerMinute: 600}, "prompt=7, completion=256", []step{
			{body: chatBody(""), code: 200},
			{body: chatBody(""), code: 200},
			{body: chatBody(""), code: 429, typ: "tokens", inMsg: "output tokens per min (OTPM): Limit 600, Requested 256", reason: rejectRateLimit},
			{body: chatBody(`,"max_completion_tokens":10`), code: 200},
		}, true, true},
		{"n choices multiply the output", ratelimit.Limits{OutputTokensPerMinute: 100}, "prompt=7, completion=3", []step{
			{body: chatBody(`,"max_tokens":30,"n":4`), code: 429, typ: "tokens", inMsg: "Request too large", reason: rejectRateLimit},
			{body: chatBody(`,"max_tokens":30,"n":3`), code: 200},
		}, false, true},
		{"a request larger than the limit", ratelimit.Limits{TokensPerMinute: 1000}, "prompt=7, completion=3", []step{
			{body: chatBody(`,"max_tokens":5000`), code: 429, typ: "tokens",
				inMsg: "Request too large for model `llama` on tokens per min (TPM): Limit 1000", reason: rejectRateLimit},
			{body: chatBody(`,"max_tokens":10`), code: 200},
		}, false, true},
		{"a huge max_tokens", ratelimit.Limits{TokensPerMinute: 1000}, "prompt=7, completion=3", []step{
			{body: chatBody(`,"max_tokens":99999999999999999999`), code: 200}, // not an int64: the default
			{body: chatBody(`,"max_tokens":9223372036854775807`), code: 429, typ: "tokens", inMsg: "Request too large", reason: rejectRateLimit},
			{body: chatBody(`,"max_tokens":-5`), code: 200},
		}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limits := tc.limits
			limits.MaxConcurrentRequests = 100 // every settlement reaches the backend
			rec := newRecBackend()
			r := newRLRig(t, rec, ratelimit.FailOpen, wholeEngine(tc.usage), LimitRule{Model: "*", Limits: limits})
			for i, s := range tc.steps {
				before := r.rejected(s.reason)
				resp, body := r.post(t, s.body)
				require.Equal(t, s.code, resp.StatusCode, "step %d: %s", i, body)
				requireLimitHeaders(t, resp.Header, tc.requests, tc.tokens)
				if s.code == 429 {
					requireRateLimitError(t, resp, body, s.typ, s.inMsg)
					require.Equal(t, before+1, r.rejected(s.reason))
				} else {
					rec.refund(t)
				}
			}
		})
	}
}

func TestRateLimitRuleOfTheModel(t *testing.T) {
	rec := newRecBackend()
	r := newRLRig(t, rec, ratelimit.FailOpen, wholeEngine(),
		LimitRule{Model: "*", Limits: ratelimit.Limits{RequestsPerMinute: 1, MaxConcurrentRequests: 100}},
		LimitRule{Model: "llama", Limits: ratelimit.Limits{RequestsPerMinute: 2, MaxConcurrentRequests: 100}},
		LimitRule{Model: "llama@canary", Limits: ratelimit.Limits{RequestsPerMinute: 1, MaxConcurrentRequests: 100}})
	model := func(m string) string { return `{"model":"` + m + `","messages":[]}` }
	for i, s := range []struct {
		body  string
		hdr   [][2]string
		code  int
		limit string
	}{
		{model("llama"), nil, 200, "2"},
		{model("llama"), nil, 200, "2"},
		{model("llama"), nil, 429, "2"},
		{model("llama@canary"), nil, 200, "1"}, // its own rule
		{model("llama"), [][2]string{{TagHeader, "canary"}}, 429, "1"},
		{model("free"), nil, 200, "1"}, // "*"
		{model("free"), nil, 429, "1"},
		{model("llama-sql"), nil, 429, "1"}, // an adapter is a model of its own: "*" too
	} {
		resp, body := r.post(t, s.body, s.hdr...)
		require.Equal(t, s.code, resp.StatusCode, "step %d: %s", i, body)
		require.Equal(t, s.limit, resp.Header.Get(ratelimit.HeaderLimitRequests), "step %d", i)
		if s.code == 200 {
			rec.refund(t)
		}
	}
}

func TestRateLimitConcurrency(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{}, 1)
	engine := func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		wholeEngine()(w, r)
	}
	rec := newRecBackend()
	r := newRLRig(t, rec, ratelimit.FailOpen, engine,
		LimitRule{Model: "*", Limits: ratelimit.Limits{MaxConcurrentRequests: 1}})
	done := make(chan int)
	go func() {
		resp, _ := r.post(t, chatBody(""))
		done <- resp.StatusCode
	}()
	<-started
	resp, body := r.post(t, chatBody(""))
	requireRateLimitError(t, resp, body, "requests", "Too many concurrent requests for model `llama`: Limit 1")
	require.Equal(t, 1.0, r.rejected(rejectConcurrency))
	close(release)
	require.Equal(t, 200, <-done)
	rec.refund(t)
	resp, _ = r.post(t, chatBody("")) // the slot is free again
	require.Equal(t, 200, resp.StatusCode)
}

func TestRateLimitFailModes(t *testing.T) {
	rule := LimitRule{Model: "*", Limits: ratelimit.Limits{RequestsPerMinute: 5, TokensPerMinute: 1000}}
	t.Run("closed", func(t *testing.T) {
		r := newRLRig(t, failingBackend{}, ratelimit.FailClosed, wholeEngine(), rule)
		resp, body := r.post(t, chatBody(""))
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		requireOpenAIError(t, body, "limiter_unavailable")
		require.Equal(t, "1", resp.Header.Get("Retry-After"))
		require.Equal(t, "5", resp.Header.Get(ratelimit.HeaderLimitRequests), "the limits are known, their state is not")
		require.Empty(t, resp.Header.Get(ratelimit.HeaderRemainingRequests))
		require.Equal(t, 1.0, r.rejected(rejectLimiterUnavailable))
		v, _ := promtest.Value(r.reg, "kvasir_ratelimit_backend_errors_total", map[string]string{"mode": "closed", "op": "reserve"})
		require.Equal(t, 1.0, v)
	})
	t.Run("open", func(t *testing.T) {
		r := newRLRig(t, failingBackend{}, ratelimit.FailOpen, wholeEngine(), rule)
		for range 10 { // twice the limit: unmetered
			resp, body := r.post(t, chatBody(""))
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			require.Equal(t, "5", resp.Header.Get(ratelimit.HeaderLimitRequests))
		}
	})
}

func TestRateLimitSettlement(t *testing.T) {
	const maxTokens = 50
	rule := LimitRule{Model: "*", Limits: ratelimit.Limits{TokensPerMinute: 100000, MaxConcurrentRequests: 10}}
	for _, tc := range []struct {
		name   string
		engine http.HandlerFunc
		body   string
		model  string
		code   int
		// used is what the settlement must account (the refund is the
		// cost less it); notServed: everything back.
		in, out   int64 // -1: the reserved input
		notServed bool
	}{
		{name: "the queue-proxy's header", engine: wholeEngine("prompt=11, completion=4, cached=3"), code: 200, in: 11, out: 4},
		{name: "its trailer on a stream", engine: streamEngine(5, "prompt=12, completion=5, cached=0"),
			body: `,"stream":true`, code: 200, in: 12, out: 5},
		{name: "a stream without its trailer: one token per content event", engine: streamEngine(5, ""),
			body: `,"stream":true`, code: 200, in: -1, out: 5},
		{name: "no header: the body's usage", engine: wholeEngine(), code: 200, in: 7, out: 3},
		{name: "forged: malformed", engine: wholeEngine("prompt=-1, completion=2"), code: 200, in: 7, out: 3},
		{name: "forged: a key twice", engine: wholeEngine("prompt=1, completion=2, prompt=3"), code: 200, in: 7, out: 3},
		{name: "forged: two headers", engine: wholeEngine("prompt=1, completion=1", "prompt=2, completion=2"), code: 200, in: 7, out: 3},
		{name: "forged: a long value", engine: wholeEngine("prompt=1, completion=1, cached=0" + strings.Repeat(", cached=0", 20)), code: 200, in: 7, out: 3},
		{name: "forged: beyond 63 bits", engine: wholeEngine("prompt=99999999999999999999, completion=1"), code: 200, in: 7, out: 3},
		{name: "forged: cached above prompt", engine: wholeEngine("prompt=1, completion=1, cached=9"), code: 200, in: 7, out: 3},
		{name: "huge but well formed: capped", engine: wholeEngine("prompt=9223372036854775807, completion=9223372036854775807"),
			code: 200, in: maxUsageTokens, out: maxTokens},
		{name: "the engine's error", engine: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":{"message":"too long","type":"invalid_request_error"}}`)
		}, code: 400, in: 0, out: 0},
		{name: "dispatch failed: not served", model: "gone", code: 502, notServed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecBackend()
			engine := tc.engine
			if engine == nil {
				engine = wholeEngine()
			}
			r := newRLRig(t, rec, ratelimit.FailOpen, engine, rule)
			body := chatBody(`,"max_tokens":` + strconv.Itoa(maxTokens) + tc.body)
			if tc.model != "" {
				body = strings.Replace(body, `"llama"`, `"`+tc.model+`"`, 1)
			}
			resp, got := r.post(t, body)
			require.Equal(t, tc.code, resp.StatusCode, string(got))
			requireLimitHeaders(t, resp.Header, false, true)
			require.NotContains(t, string(got), "Kvasir-Usage")
			cost := rec.lastTake(t)
			require.Equal(t, ratelimit.Cost{Requests: 1, InputTokens: cost.InputTokens, OutputTokens: maxTokens}, cost)
			refund := rec.refund(t)
			if tc.notServed {
				require.Equal(t, cost, refund)
				return
			}
			in := tc.in
			if in < 0 {
				in = cost.InputTokens
			}
			require.Equal(t, ratelimit.Cost{InputTokens: cost.InputTokens - in, OutputTokens: cost.OutputTokens - tc.out}, refund)
		})
	}
}

func TestRateLimitSettlesAStreamTheClientLeft(t *testing.T) {
	engineGone := make(chan struct{})
	engine := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Trailer", openai.UsageHeader)
		for range 3 {
			_, _ = io.WriteString(w, rlContent)
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done() // generating until the client leaves: no trailer
		close(engineGone)
	}
	rec := newRecBackend()
	r := newRLRig(t, rec, ratelimit.FailOpen, engine,
		LimitRule{Model: "*", Limits: ratelimit.Limits{OutputTokensPerMinute: 1000, MaxConcurrentRequests: 10}})
	req, err := http.NewRequest(http.MethodPost, r.url+PathChat, strings.NewReader(chatBody(`,"stream":true,"max_tokens":40`)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+rlKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, "1000", resp.Header.Get(ratelimit.HeaderLimitTokens))
	rd := bufio.NewReader(resp.Body)
	for seen := 0; seen < 3; {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		if strings.HasPrefix(line, "data:") {
			seen++
		}
	}
	resp.Body.Close() // the client leaves mid-stream
	<-engineGone
	require.Equal(t, ratelimit.Cost{OutputTokens: 40 - 3}, rec.refund(t), "the input is kept, the output is what was generated")
}

func TestRateLimitOverWebSocket(t *testing.T) {
	rec := newRecBackend()
	r := newRLRig(t, rec, ratelimit.FailOpen, streamEngine(2, "prompt=3, completion=2"),
		LimitRule{Model: "*", Limits: ratelimit.Limits{RequestsPerMinute: 1, MaxConcurrentRequests: 10}})
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(r.url, "http")+PathChat,
		http.Header{"Authorization": {"Bearer " + rlKey}})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"request_id":1,"model":"llama","messages":[],"stream":true}`)))
	for {
		m := readJSON(t, c)
		require.Nil(t, m["error"], m)
		if m["type"] == "done" {
			break
		}
	}
	cost := rec.lastTake(t)
	require.Equal(t, ratelimit.Cost{InputTokens: cost.InputTokens - 3, OutputTokens: DefaultOutputTokens - 2}, rec.refund(t))
	require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"request_id":2,"model":"llama","messages":[]}`)))
	m := readJSON(t, c)
	require.Equal(t, 2.0, m["request_id"])
	e, _ := m["error"].(map[string]any)
	require.Equal(t, "rate_limit_exceeded", e["code"], m)
	require.Equal(t, "requests", e["type"])
	require.Contains(t, e["message"], "Please try again in")
	require.Equal(t, 1.0, r.rejected(rejectRateLimit))
}

func TestTenantTokensFromTheQueueProxy(t *testing.T) {
	for _, tc := range []struct {
		name               string
		engine             http.HandlerFunc
		body               string
		input, out, cached float64
	}{
		{"header over the body's usage", wholeEngine("prompt=20, completion=6, cached=5"), "", 20, 6, 5},
		{"a stream without include_usage, by its trailer", streamEngine(2, "prompt=9, completion=2, cached=1"), `,"stream":true`, 9, 2, 1},
		{"a forged header: the body's usage", wholeEngine("prompt=x"), "", 7, 3, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRLRig(t, ratelimit.NewMemory(nil), ratelimit.FailOpen, tc.engine) // no rule: not limited
			resp, body := r.post(t, chatBody(tc.body))
			require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
			requireLimitHeaders(t, resp.Header, false, false)
			for kind, want := range map[string]float64{tokensInput: tc.input, tokensOutput: tc.out, tokensCached: tc.cached} {
				require.Eventually(t, func() bool {
					v, _ := promtest.Value(r.reg, "kvasir_tenant_tokens_total",
						map[string]string{"namespace": "default", "tenant": "team", "model": "llama", "kind": kind})
					return v == want
				}, 5*time.Second, 5*time.Millisecond, kind)
			}
		})
	}
}

func TestEstimateCost(t *testing.T) {
	chat := `{"model":"m","messages":[{"role":"user","content":"0123456789abcdef"}]`
	text := func(api, body string) int64 {
		obj, err := openai.Parse([]byte(body))
		require.NoError(t, err)
		tx, err := (&scheduler.Request{Body: obj, API: api}).Text()
		require.NoError(t, err)
		return int64(prompt.TokenCount(tx))
	}
	for _, tc := range []struct {
		name   string
		api    string
		body   string
		tokens []uint32
		in     int64 // -1: the canonical prompt's bytes / 4
		out    int64
		bound  bool
	}{
		{"default output", scheduler.APIChat, chat + `}`, nil, -1, DefaultOutputTokens, false},
		{"max_tokens", scheduler.APIChat, chat + `,"max_tokens":12}`, nil, -1, 12, true},
		{"max_completion_tokens first", scheduler.APIChat, chat + `,"max_completion_tokens":7,"max_tokens":12}`, nil, -1, 7, true},
		{"null max_tokens", scheduler.APIChat, chat + `,"max_tokens":null}`, nil, -1, DefaultOutputTokens, false},
		{"a float max_tokens", scheduler.APIChat, chat + `,"max_tokens":1.5}`, nil, -1, DefaultOutputTokens, false},
		{"a string max_tokens", scheduler.APIChat, chat + `,"max_tokens":"9"}`, nil, -1, DefaultOutputTokens, false},
		{"a huge max_tokens is capped", scheduler.APIChat, chat + `,"max_tokens":9223372036854775807}`, nil, -1, maxUsageTokens, true},
		{"n", scheduler.APIChat, chat + `,"max_tokens":10,"n":3}`, nil, -1, 30, true},
		{"a huge n is capped", scheduler.APIChat, chat + `,"max_tokens":10,"n":100000}`, nil, -1, 10 * maxChoices, true},
		{"a tokenizer's tokens", scheduler.APIChat, chat + `}`, []uint32{1, 2, 3}, 3, DefaultOutputTokens, false},
		{"completions", scheduler.APICompletions, `{"model":"m","prompt":"0123456789abcdef0123"}`, nil, -1, DefaultOutputTokens, false},
		{"embeddings", scheduler.APIEmbeddings, `{"model":"m","input":"0123456789"}`, nil, 3, 0, true},
		{"embeddings without input", scheduler.APIEmbeddings, `{"model":"m"}`, nil, 4, 0, true},
		{"an empty prompt: at least 1", scheduler.APICompletions, `{"model":"m","prompt":""}`, nil, 1, DefaultOutputTokens, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj, err := openai.Parse([]byte(tc.body))
			require.NoError(t, err)
			req := &scheduler.Request{Body: obj, API: tc.api, Tokens: tc.tokens}
			defer req.Release()
			c, bound := estimateCost(req)
			in := tc.in
			if in < 0 {
				in = text(tc.api, tc.body)
			}
			require.Equal(t, ratelimit.Cost{Requests: 1, InputTokens: in, OutputTokens: tc.out}, c)
			require.Equal(t, tc.bound, bound)
		})
	}
}

func TestTenantLimitRules(t *testing.T) {
	tn := &v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "a"}, Spec: v1alpha1.TenantSpec{
		Limits: []v1alpha1.TenantLimit{
			{RequestsPerMinute: ptr[int64](600), TokensPerMinute: ptr[int64](100000)},
			{Model: "llama", InputTokensPerMinute: ptr[int64](80), OutputTokensPerMinute: ptr[int64](20),
				MaxConcurrentRequests: ptr[int64](4)},
		}}}
	cfg := TenantConfigOf(tn, [][32]byte{tenantkeys.Digest(rlKey)})
	require.Equal(t, []LimitRule{
		{Model: "*", Limits: ratelimit.Limits{RequestsPerMinute: 600, TokensPerMinute: 100000}},
		{Model: "llama", Limits: ratelimit.Limits{InputTokensPerMinute: 80, OutputTokensPerMinute: 20, MaxConcurrentRequests: 4}},
	}, cfg.Limits)
	require.NoError(t, ValidateTenants([]TenantConfig{cfg}))

	for _, tc := range []struct {
		name  string
		rules []LimitRule
		err   string
	}{
		{"negative", []LimitRule{{Model: "*", Limits: ratelimit.Limits{TokensPerMinute: -1}}},
			`tenant "ns/a": spec.limits[0].tokensPerMinute: must be >= 1, got -1`},
		{"nothing set", []LimitRule{{Model: "*"}}, `tenant "ns/a": spec.limits[0]: sets no limit`},
		{"twice", []LimitRule{{Model: "llama", Limits: ratelimit.Limits{RequestsPerMinute: 1}}, {Model: "llama", Limits: ratelimit.Limits{RequestsPerMinute: 2}}},
			`spec.limits[1].model: "llama" already has a limit (spec.limits[0])`},
		{"no model", []LimitRule{{Limits: ratelimit.Limits{RequestsPerMinute: 1}}}, `spec.limits[0].model: ""`},
		{"an empty tag", []LimitRule{{Model: "llama@", Limits: ratelimit.Limits{RequestsPerMinute: 1}}}, `spec.limits[0].model: "llama@"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.Limits = tc.rules
			err := ValidateTenants([]TenantConfig{c})
			require.ErrorContains(t, err, tc.err)
		})
	}
}

func TestNewRateLimiter(t *testing.T) {
	reg := prometheus.NewRegistry()
	l, closeFn, err := NewRateLimiter("", ratelimit.FailClosed, reg, nil)
	require.NoError(t, err)
	require.NotNil(t, l)
	require.NoError(t, closeFn())
	_, _, err = NewRateLimiter("no-port", ratelimit.FailOpen, reg, nil)
	require.ErrorContains(t, err, `"no-port"`)
	_, _, err = NewRateLimiter("", "sometimes", reg, nil)
	require.Error(t, err)
	// Redis that does not answer: built all the same, the fail mode applies.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	l, closeFn, err = NewRateLimiter(addr, ratelimit.FailClosed, reg, nil)
	require.NoError(t, err)
	defer closeFn()
	d, err := l.Reserve(context.Background(), ratelimit.Key{Namespace: "n", Tenant: "t", Model: "*"},
		ratelimit.Limits{RequestsPerMinute: 1}, ratelimit.Cost{Requests: 1})
	require.NoError(t, err)
	require.True(t, d.Unavailable)
	require.Equal(t, http.StatusServiceUnavailable, d.StatusCode())
}
