package ratelimit

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	testclock "k8s.io/utils/clock/testing"

	"github.com/kvasir-serving/kvasir/pkg/testing/redistest"
)

// fakeClock is a clock the tests move by hand (Step).
type fakeClock = testclock.FakeClock

func newFakeClock() *fakeClock { return testclock.NewFakeClock(time.Unix(1_700_000_000, 0)) }

// backendKind makes Limiters over one kind of backend; every Limiter made
// by one newLimiters call shares the same buckets (several activators).
type backendKind struct {
	name        string
	newLimiters func(t *testing.T, clk *fakeClock, n int) []*Limiter
}

func sharedRedis(t *testing.T) string {
	t.Helper()
	// Each case starts its own server (tens of milliseconds) and has its
	// own key prefix too.
	return redistest.Start(t).Addr
}

var prefixSeq atomic.Int64

func newRedisClient(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(RedisOptions(addr, time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func backendKinds() []backendKind {
	return []backendKind{{
		name: "memory",
		newLimiters: func(t *testing.T, clk *fakeClock, n int) []*Limiter {
			b := NewMemory(clk.Now)
			ls := make([]*Limiter, n)
			for i := range ls {
				ls[i] = mustNew(t, Config{Backend: b})
			}
			return ls
		},
	}, {
		name: "redis",
		newLimiters: func(t *testing.T, clk *fakeClock, n int) []*Limiter {
			addr := sharedRedis(t)
			prefix := fmt.Sprintf("test%d:", prefixSeq.Add(1))
			ls := make([]*Limiter, n)
			for i := range ls { // one client each: separate activators
				b := NewRedis(newRedisClient(t, addr), RedisConfig{Prefix: prefix, Now: clk.Now})
				ls[i] = mustNew(t, Config{Backend: b, Timeout: time.Second})
			}
			return ls
		},
	}}
}

func mustNew(t testing.TB, cfg Config) *Limiter {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

var key = Key{Namespace: "default", Tenant: "team-a", Model: "*"}

func reserve(t *testing.T, l *Limiter, limits Limits, cost Cost) Decision {
	t.Helper()
	d, err := l.Reserve(context.Background(), key, limits, cost)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	return d
}

func settle(t *testing.T, l *Limiter, d Decision, u Usage) {
	t.Helper()
	if d.Reservation == nil {
		t.Fatal("Settle: no reservation (request was denied)")
	}
	if err := l.Settle(context.Background(), d.Reservation, u); err != nil {
		t.Fatalf("Settle: %v", err)
	}
}

func wantAllowed(t *testing.T, d Decision, want bool) {
	t.Helper()
	if d.Allowed != want {
		t.Fatalf("Allowed = %v, want %v (decision %+v)", d.Allowed, want, d)
	}
}

func wantDenied(t *testing.T, d Decision, limit Limit, retry time.Duration) {
	t.Helper()
	wantAllowed(t, d, false)
	if d.Denied != limit || d.RetryAfter != retry || d.StatusCode() != http.StatusTooManyRequests {
		t.Fatalf("denied by %s after %s (status %d), want %s after %s (429)", d.Denied, d.RetryAfter, d.StatusCode(), limit, retry)
	}
}

func wantRemaining(t *testing.T, got Quota, remaining int64) {
	t.Helper()
	if got.Remaining != remaining {
		t.Fatalf("remaining %d, want %d (quota %+v)", got.Remaining, remaining, got)
	}
}

var one = Cost{Requests: 1}

// conformance is what both backends must do alike.
var conformance = []struct {
	name string
	run  func(t *testing.T, l *Limiter, clk *fakeClock)
}{{
	name: "requests per minute refill one every minute/L",
	run: func(t *testing.T, l *Limiter, clk *fakeClock) {
		lim := Limits{RequestsPerMinute: 3}
		for i := range 3 {
			d := reserve(t, l, lim, one)
			wantAllowed(t, d, true)
			wantRemaining(t, d.State.Requests, int64(2-i))
		}
		wantDenied(t, reserve(t, l, lim, one), LimitRequests, 20*time.Second)
		clk.Step(19 * time.Second)
		wantDenied(t, reserve(t, l, lim, one), LimitRequests, time.Second)
		clk.Step(time.Second)
		wantAllowed(t, reserve(t, l, lim, one), true)
	},
}, {
	name: "settle refunds unused output tokens",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{TokensPerMinute: 1000}
		d := reserve(t, l, lim, Cost{Requests: 1, InputTokens: 100, OutputTokens: 500})
		wantRemaining(t, d.State.Tokens, 400)
		wantDenied(t, reserve(t, l, lim, Cost{Requests: 1, InputTokens: 100, OutputTokens: 600}), LimitTokens, 18*time.Second)
		settle(t, l, d, Usage{InputTokens: 100, OutputTokens: 100})
		d = reserve(t, l, lim, Cost{Requests: 1, InputTokens: 100, OutputTokens: 600})
		wantAllowed(t, d, true)
		wantRemaining(t, d.State.Tokens, 100)
	},
}, {
	name: "settle debits an overuse",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{TokensPerMinute: 1000, OutputTokensPerMinute: 1000}
		d := reserve(t, l, lim, Cost{Requests: 1, OutputTokens: 100})
		settle(t, l, d, Usage{OutputTokens: 400})
		d = reserve(t, l, lim, Cost{Requests: 1})
		wantRemaining(t, d.State.Tokens, 600)
	},
}, {
	name: "a request not served refunds everything",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{RequestsPerMinute: 1, TokensPerMinute: 100, MaxConcurrentRequests: 1}
		cost := Cost{Requests: 1, InputTokens: 60, OutputTokens: 40}
		d := reserve(t, l, lim, cost)
		wantAllowed(t, d, true)
		settle(t, l, d, Usage{NotServed: true})
		d = reserve(t, l, lim, cost)
		wantAllowed(t, d, true)
		wantRemaining(t, d.State.Requests, 0)
		wantRemaining(t, d.State.Tokens, 0)
	},
}, {
	name: "concurrency slots are held until settle",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{MaxConcurrentRequests: 2}
		a, b := reserve(t, l, lim, one), reserve(t, l, lim, one)
		wantAllowed(t, a, true)
		wantAllowed(t, b, true)
		wantDenied(t, reserve(t, l, lim, one), LimitConcurrency, time.Second)
		settle(t, l, a, Usage{})
		settle(t, l, a, Usage{}) // a second settle frees nothing more
		wantAllowed(t, reserve(t, l, lim, one), true)
		wantDenied(t, reserve(t, l, lim, one), LimitConcurrency, time.Second)
	},
}, {
	name: "all or nothing across limits",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{RequestsPerMinute: 10, InputTokensPerMinute: 100, OutputTokensPerMinute: 50, MaxConcurrentRequests: 5}
		wantAllowed(t, reserve(t, l, lim, Cost{Requests: 1, InputTokens: 10, OutputTokens: 40}), true)
		d := reserve(t, l, lim, Cost{Requests: 1, InputTokens: 10, OutputTokens: 20})
		wantDenied(t, d, LimitOutputTokens, 12*time.Second)
		wantRemaining(t, d.State.Requests, 9) // not debited by the denial
		d = reserve(t, l, lim, Cost{Requests: 1, InputTokens: 10, OutputTokens: 10})
		wantAllowed(t, d, true)
		wantRemaining(t, d.State.Requests, 8)
		if d.State.Tokens.Limit != 50 || d.State.Tokens.Remaining != 0 {
			t.Fatalf("tokens state %+v, want the output limit (50) with 0 remaining", d.State.Tokens)
		}
	},
}, {
	name: "the binding limit is the longest wait",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{RequestsPerMinute: 1, TokensPerMinute: 600}
		wantAllowed(t, reserve(t, l, lim, Cost{Requests: 1, InputTokens: 300}), true)
		// requests wait 60s, tokens 30s + 40 tokens = 34s
		wantDenied(t, reserve(t, l, lim, Cost{Requests: 1, InputTokens: 340}), LimitRequests, time.Minute)
	},
}, {
	name: "a cost above the limit is oversize",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{RequestsPerMinute: 10, TokensPerMinute: 100}
		d := reserve(t, l, lim, Cost{Requests: 1, InputTokens: 150, OutputTokens: 50})
		wantDenied(t, d, LimitTokens, time.Minute)
		if !d.Oversize {
			t.Fatal("Oversize = false, want true")
		}
		wantRemaining(t, d.State.Tokens, 100)
	},
}, {
	name: "headers",
	run: func(t *testing.T, l *Limiter, _ *fakeClock) {
		lim := Limits{RequestsPerMinute: 60, TokensPerMinute: 1000}
		h := http.Header{}
		WriteHeaders(h, reserve(t, l, lim, Cost{Requests: 1, InputTokens: 100, OutputTokens: 100}))
		wantHeaders(t, h, map[string]string{
			HeaderLimitRequests: "60", HeaderRemainingRequests: "59", HeaderResetRequests: "1s",
			HeaderLimitTokens: "1000", HeaderRemainingTokens: "800", HeaderResetTokens: "12s",
			HeaderRetryAfter: "", HeaderRetryAfterMs: "",
		})
		h = http.Header{}
		WriteHeaders(h, reserve(t, l, lim, Cost{Requests: 1, InputTokens: 850}))
		wantHeaders(t, h, map[string]string{
			HeaderRemainingRequests: "59", HeaderRemainingTokens: "800", HeaderResetTokens: "12s",
			HeaderRetryAfter: "3", HeaderRetryAfterMs: "3000",
		})
	},
}}

func wantHeaders(t *testing.T, h http.Header, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestConformance(t *testing.T) {
	for _, kind := range backendKinds() {
		t.Run(kind.name, func(t *testing.T) {
			for _, tc := range conformance {
				t.Run(tc.name, func(t *testing.T) {
					clk := newFakeClock()
					tc.run(t, kind.newLimiters(t, clk, 1)[0], clk)
				})
			}
		})
	}
}

// TestExactUnderConcurrency hammers one key from many goroutines (spread
// over 3 Limiters sharing the buckets: 3 activators) and counts admissions.
func TestExactUnderConcurrency(t *testing.T) {
	cases := []struct {
		name   string
		limits Limits
		cost   Cost
		hold   bool // keep reservations (concurrency) instead of settling
		want   int64
	}{
		{name: "requests", limits: Limits{RequestsPerMinute: 100}, cost: one, want: 100},
		{name: "tokens", limits: Limits{TokensPerMinute: 1000}, cost: Cost{Requests: 1, InputTokens: 3, OutputTokens: 4}, want: 142},
		{name: "concurrency", limits: Limits{MaxConcurrentRequests: 7}, cost: one, hold: true, want: 7},
	}
	const goroutines, attempts = 12, 25
	for _, kind := range backendKinds() {
		for _, tc := range cases {
			t.Run(kind.name+"/"+tc.name, func(t *testing.T) {
				limiters := kind.newLimiters(t, newFakeClock(), 3)
				var admitted atomic.Int64
				var wg sync.WaitGroup
				for g := range goroutines {
					wg.Go(func() {
						l := limiters[g%len(limiters)]
						for range attempts {
							d, err := l.Reserve(context.Background(), key, tc.limits, tc.cost)
							if err != nil || d.Unavailable {
								t.Errorf("Reserve: %v %+v", err, d)
								return
							}
							if d.Allowed {
								admitted.Add(1)
							}
						}
					})
				}
				wg.Wait()
				if got := admitted.Load(); got != tc.want {
					t.Fatalf("admitted %d of %d, want exactly %d", got, goroutines*attempts, tc.want)
				}
			})
		}
	}
}

// unanswering accepts connections and never answers: a hung Redis.
func unanswering(t *testing.T) string {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	done := make(chan struct{})
	t.Cleanup(func() { close(done); _ = ln.Close(); conns.Wait() })
	conns.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() { <-done; _ = c.Close() })
		}
	})
	return ln.Addr().String()
}

func TestFailModes(t *testing.T) {
	lim := Limits{RequestsPerMinute: 10, TokensPerMinute: 1000, MaxConcurrentRequests: 2}
	for _, mode := range []FailMode{FailOpen, FailClosed} {
		for _, failure := range []string{"killed", "hung"} {
			t.Run(string(mode)+"/"+failure, func(t *testing.T) {
				reg := prometheus.NewRegistry()
				var addr string
				var srv *redistest.Server
				if failure == "hung" {
					addr = unanswering(t)
				} else {
					srv = redistest.Start(t)
					addr = srv.Addr
				}
				timeout := 50 * time.Millisecond
				l := mustNew(t, Config{
					Backend:    NewRedis(newRedisClient(t, addr), RedisConfig{}),
					FailMode:   mode,
					Timeout:    timeout,
					Registerer: reg,
					Logger:     logr.Discard(),
				})
				if srv != nil {
					d := reserve(t, l, lim, one)
					wantAllowed(t, d, true)
					settle(t, l, d, Usage{})
					srv.Kill(t)
				}
				d := reserve(t, l, lim, one)
				if !d.Unavailable || d.Allowed != (mode == FailOpen) {
					t.Fatalf("decision %+v, want unavailable and allowed=%v", d, mode == FailOpen)
				}
				if mode == FailClosed && (d.StatusCode() != http.StatusServiceUnavailable || d.RetryAfter != time.Second) {
					t.Fatalf("status %d retry %s, want 503 after 1s", d.StatusCode(), d.RetryAfter)
				}
				if mode == FailOpen {
					settle(t, l, d, Usage{OutputTokens: 10}) // unmetered: nothing to give back
				}
				errs := testutil.ToFloat64(l.errors.WithLabelValues(string(mode), "reserve"))
				if errs != 1 {
					t.Fatalf("kvasir_ratelimit_backend_errors_total{mode=%q,op=reserve} = %v, want 1", mode, errs)
				}
				if srv == nil {
					return
				}
				srv.Restart(t)
				d = reserve(t, l, lim, one)
				if d.Unavailable || !d.Allowed {
					t.Fatalf("after Redis came back: %+v, want allowed", d)
				}
				wantRemaining(t, d.State.Requests, 9) // a new, empty Redis
			})
		}
	}
}

func TestReserveRejectsBadInput(t *testing.T) {
	l := mustNew(t, Config{Backend: NewMemory(nil)})
	cases := []struct {
		name   string
		ctx    func() context.Context
		limits Limits
		cost   Cost
	}{
		{name: "negative limit", ctx: context.Background, limits: Limits{TokensPerMinute: -1}, cost: one},
		{name: "negative cost", ctx: context.Background, cost: Cost{Requests: 1, OutputTokens: -1}},
		{name: "done context", ctx: func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, cost: one},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := l.Reserve(tc.ctx(), key, tc.limits, tc.cost); err == nil {
				t.Fatal("Reserve: want an error")
			}
		})
	}
}

func TestNewConfig(t *testing.T) {
	cases := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "no backend", cfg: Config{}, wantErr: true},
		{name: "bad fail mode", cfg: Config{Backend: NewMemory(nil), FailMode: "sometimes"}, wantErr: true},
		{name: "defaults", cfg: Config{Backend: NewMemory(nil)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("New: %v, want error %v", err, tc.wantErr)
			}
			if err == nil && (l.failMode != FailOpen || l.timeout != DefaultTimeout) {
				t.Fatalf("defaults: %s %s, want open %s", l.failMode, l.timeout, DefaultTimeout)
			}
		})
	}
	// Several limiters register the same counter with one registry.
	reg := prometheus.NewRegistry()
	mustNew(t, Config{Backend: NewMemory(nil), Registerer: reg})
	mustNew(t, Config{Backend: NewMemory(nil), Registerer: reg})
}

func TestMemorySweepsIdleKeys(t *testing.T) {
	clk := newFakeClock()
	m := NewMemory(clk.Now)
	l := mustNew(t, Config{Backend: m})
	lim := Limits{RequestsPerMinute: 60, MaxConcurrentRequests: 1}
	d := reserve(t, l, lim, one)
	clk.Step(time.Minute)
	m.Sweep()
	if m.Len() != 1 {
		t.Fatalf("swept a key with a request in flight: %d keys", m.Len())
	}
	settle(t, l, d, Usage{})
	m.Sweep()
	if m.Len() != 0 {
		t.Fatalf("%d keys after an idle sweep, want 0", m.Len())
	}
}

func TestRedisKeysExpireWhenFull(t *testing.T) {
	addr := redistest.Start(t).Addr
	client := newRedisClient(t, addr)
	l := mustNew(t, Config{Backend: NewRedis(client, RedisConfig{Lease: time.Minute})})
	d := reserve(t, l, Limits{RequestsPerMinute: 60, TokensPerMinute: 6000, MaxConcurrentRequests: 3}, Cost{Requests: 1, InputTokens: 10})
	ctx := context.Background()
	keys, err := client.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 {
		t.Fatalf("keys %v, want the requests and tokens buckets and the slots", keys)
	}
	want := map[string]time.Duration{"r": time.Second, "t": 100 * time.Millisecond, "c": time.Minute}
	for _, k := range keys {
		ttl, err := client.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		w := want[k[len(k)-1:]]
		if ttl <= 0 || ttl > w+2*time.Millisecond {
			t.Errorf("%s expires in %s, want within %s", k, ttl, w)
		}
	}
	settle(t, l, d, Usage{NotServed: true})
	if n, _ := client.Exists(ctx, keys...).Result(); n != 0 {
		t.Errorf("%d keys after a full refund and the slot's release, want none", n)
	}
}

func TestFormatReset(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"}, {-time.Second, "0s"}, {120 * time.Millisecond, "120ms"}, {time.Second, "1s"},
		{6 * time.Minute, "6m0s"}, {17064 * time.Millisecond, "17.064s"}, {1500 * time.Microsecond, "2ms"},
	}
	for _, tc := range cases {
		if got := FormatReset(tc.d); got != tc.want {
			t.Errorf("FormatReset(%s) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestKeyString(t *testing.T) {
	a := Key{Namespace: "a/b", Tenant: "c", Model: "*"}
	b := Key{Namespace: "a", Tenant: "b/c", Model: "*"}
	if a.String() == b.String() {
		t.Fatalf("%v and %v share the key %q", a, b, a.String())
	}
}
