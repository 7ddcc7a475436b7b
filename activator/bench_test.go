package activator

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	tenantkeys "github.com/kvasir-serving/kvasir/pkg/tenant"
	"github.com/kvasir-serving/kvasir/pkg/testing/redistest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// BenchmarkHop measures one non-streaming request through the activator to a
// trivial backend over loopback, client and backend included:
//
//	go test -run '^$' -bench Hop -benchmem ./activator/
func BenchmarkHop(b *testing.B) { benchHop(b, nil, nil) }

// BenchmarkHopTenants is BenchmarkHop with a tenant's key checked, and with
// its rate limits reserved and settled in memory or in a redis-server on
// loopback (skipped without one: KVASIR_REDIS_SERVER or make redis-assets):
// the difference to "open" is what authentication and the limit check add.
//
//	KVASIR_REDIS_SERVER="$(hack/redis-assets.sh)" go test -run '^$' -bench HopTenants -benchmem ./activator/
func BenchmarkHopTenants(b *testing.B) {
	tenants := []TenantConfig{{Namespace: "d", Name: "t", Keys: [][32]byte{tenantkeys.Digest("sk-bench-key")}, Models: []string{"*"},
		Limits: []LimitRule{{Model: "*", Limits: ratelimit.Limits{RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 40,
			MaxConcurrentRequests: 1 << 20}}}}}
	b.Run("open", func(b *testing.B) { benchHop(b, nil, nil) })
	b.Run("key", func(b *testing.B) {
		noLimits := []TenantConfig{tenants[0]}
		noLimits[0].Limits = nil
		benchHop(b, noLimits, nil)
	})
	b.Run("key+limits/memory", func(b *testing.B) {
		l, err := ratelimit.New(ratelimit.Config{Backend: ratelimit.NewMemory(nil)})
		if err != nil {
			b.Fatal(err)
		}
		benchHop(b, tenants, l)
	})
	b.Run("key+limits/redis", func(b *testing.B) {
		srv := redistest.Start(b)
		l, closeLimiter, err := NewRateLimiter(srv.Addr, ratelimit.FailClosed, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer closeLimiter()
		benchHop(b, tenants, l)
	})
}

// benchHop runs the hop benchmark with tenants (nil: the API is open) and
// a rate limiter (nil: none).
func benchHop(b *testing.B, tenants []TenantConfig, limiter *ratelimit.Limiter) {
	resp := []byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(resp)
	}))
	defer be.Close()
	opts := []Option{WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false)}
	if limiter != nil {
		opts = append(opts, WithRateLimiter(limiter))
	}
	act, err := New(DefaultConfig(), opts...)
	if err != nil {
		b.Fatal(err)
	}
	if err := act.SetTenants(tenants); err != nil {
		b.Fatal(err)
	}
	if err := act.SetServices([]ServiceConfig{{Namespace: "d", Name: "s", Model: "m",
		Traffic: []traffic.Target{{Revision: "r", Percent: 100}}, Revisions: []RevisionConfig{{Name: "r"}}}}); err != nil {
		b.Fatal(err)
	}
	act.SetEndpoints(fleet.Key{Namespace: "d", Service: "s", Revision: "r"}, []fleet.Endpoint{{Name: "e", Address: strings.TrimPrefix(be.URL, "http://")}})
	front := newFastServer(b, act.FastHandler())
	defer front.Close()
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":1}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req, err := http.NewRequest(http.MethodPost, front.URL+PathChat, bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if tenants != nil {
			req.Header.Set("Authorization", "Bearer sk-bench-key")
		}
		r, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			b.Fatal(r.Status)
		}
	}
}

// BenchmarkPrefillRequest measures building the prefill half of a
// disaggregated request from the client's body (parsed once).
func BenchmarkPrefillRequest(b *testing.B) {
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"` + strings.Repeat("You are helpful. ", 400) +
		`"},{"role":"user","content":"hello"}],"max_completion_tokens":64,"stream":true,"stream_options":{"include_usage":true}}`)
	b.ReportAllocs()
	for b.Loop() {
		obj, err := openai.Parse(body)
		if err != nil {
			b.Fatal(err)
		}
		if len(prefillRequest(obj)) == 0 {
			b.Fatal("empty")
		}
	}
}

// BenchmarkAuthAndLimit is what authentication and the limit check add to
// a tenant's request inside the activator, without the hop's sockets: the
// key's digest looked up, the rule found, the cost estimated and reserved
// in memory, the x-ratelimit-* headers written and the reservation settled
// with a usage.
//
//	go test -run '^$' -bench AuthAndLimit -benchmem ./activator/
func BenchmarkAuthAndLimit(b *testing.B) {
	l, err := ratelimit.New(ratelimit.Config{Backend: ratelimit.NewMemory(nil)})
	if err != nil {
		b.Fatal(err)
	}
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false), WithRateLimiter(l))
	if err != nil {
		b.Fatal(err)
	}
	defer act.Close()
	if err := act.SetServices([]ServiceConfig{{Namespace: "d", Name: "s", Model: "m",
		Traffic: []traffic.Target{{Revision: "r", Percent: 100}}, Revisions: []RevisionConfig{{Name: "r"}}}}); err != nil {
		b.Fatal(err)
	}
	if err := act.SetTenants([]TenantConfig{{Namespace: "d", Name: "t", Keys: [][32]byte{tenantkeys.Digest("sk-bench-key")},
		Models: []string{"*"}, Limits: []LimitRule{{Model: "*", Limits: ratelimit.Limits{RequestsPerMinute: 1 << 40,
			TokensPerMinute: 1 << 40, MaxConcurrentRequests: 1 << 20}}}}}); err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":1}`)
	obj, err := openai.Parse(body)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tn, ok := act.tenants.Load().lookup("sk-bench-key")
		if !ok {
			b.Fatal("key not found")
		}
		rt, f := act.route(obj, PathChat, "", tn)
		if f != nil {
			b.Fatal(f.err.Message)
		}
		if f := act.admit(ctx, &rt); f != nil {
			b.Fatal(f.err.Message)
		}
		h := http.Header{}
		rt.adm.writeHeaders(h)
		rt.adm.settle(ratelimit.Usage{InputTokens: 4, OutputTokens: 1})
		rt.done()
	}
}

// BenchmarkHopFast is BenchmarkHop with a fasthttp client and a fasthttp
// backend on loopback, whose own allocations are close to none: what it
// counts is, nearly all, the activator's (server, routing, the upstream
// exchange and the relay).
//
//	go test -run '^$' -bench HopFast -benchmem ./activator/
func BenchmarkHopFast(b *testing.B) {
	b.Run("whole", func(b *testing.B) { benchHopFast(b, false, 0) })
	b.Run("sse", func(b *testing.B) { benchHopFast(b, true, 0) })
	// 100 events, each flushed by the engine on its own: what an event costs.
	b.Run("sse-100", func(b *testing.B) { benchHopFast(b, true, 100) })
}

// benchHopFast sends chat requests through the activator to a fasthttp
// engine answering whole, or streamed: one write of two events when flushed
// is 0, else flushed events of a token each and [DONE].
func benchHopFast(b *testing.B, stream bool, flushed int) {
	whole := []byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`)
	events := []byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n")
	be := newFastServer(b, func(ctx *fasthttp.RequestCtx) {
		if stream {
			ctx.SetContentType("text/event-stream")
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
				if flushed == 0 {
					_, _ = w.Write(events)
					return
				}
				for range flushed {
					_, _ = w.Write(events[:len(events)-len("data: [DONE]\n\n")])
					_ = w.Flush()
				}
				_, _ = w.WriteString("data: [DONE]\n\n")
			})
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(whole)
	})
	defer be.Close()
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	if err != nil {
		b.Fatal(err)
	}
	defer act.Close()
	if err := act.SetServices([]ServiceConfig{{Namespace: "d", Name: "s", Model: "m",
		Traffic: []traffic.Target{{Revision: "r", Percent: 100}}, Revisions: []RevisionConfig{{Name: "r"}}}}); err != nil {
		b.Fatal(err)
	}
	act.SetEndpoints(fleet.Key{Namespace: "d", Service: "s", Revision: "r"}, []fleet.Endpoint{{Name: "e", Address: strings.TrimPrefix(be.URL, "http://")}})
	front := newFastServer(b, act.FastHandler())
	defer front.Close()
	client := &fasthttp.HostClient{Addr: strings.TrimPrefix(front.URL, "http://")}
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":1}`)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req.Reset()
		req.Header.SetMethod(http.MethodPost)
		req.SetRequestURI(front.URL + PathChat)
		req.Header.SetContentType("application/json")
		req.SetBody(body)
		if err := client.Do(req, resp); err != nil {
			b.Fatal(err)
		}
		if resp.StatusCode() != 200 {
			b.Fatal(resp.StatusCode(), string(resp.Body()))
		}
	}
}
