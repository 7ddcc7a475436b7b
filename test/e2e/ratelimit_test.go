package e2e

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/pkg/testing/redistest"
)

// The keys of the rate limit tests: a limited tenant and an unlimited one
// that scales the model up first, so that the limited tenant's requests
// run back to back, well within a minute.
const (
	rlLimitedKey = "sk-e2e-rl-limited-3c81f0a9d2"
	rlFreeKey    = "sk-e2e-rl-free-b74e1d05c6"
)

// rateLimitDoc is the demo model and the two tenants; limits is the YAML
// of the limited tenant's one rule (for every model).
func rateLimitDoc(limits string) string {
	return demo + `---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: limited}
spec:
  apiKeys: [{sha256: "` + sha256Hex(rlLimitedKey) + `"}]
  limits:
    - {model: "*", ` + limits + `}
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: free}
spec:
  apiKeys: [{sha256: "` + sha256Hex(rlFreeKey) + `"}]
`
}

// warmUp scales the demo model up with the unlimited tenant's request.
func warmUp(t *testing.T, p *platform) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	free := keyed(p, rlFreeKey)
	_, err := free.Chat.Completions.New(ctx, chatParams("warm up", 2))
	require.NoError(t, err)
}

// requireRateLimited checks that err is the SDK's 429 of a limit, with
// OpenAI's headers, and returns it.
func requireRateLimited(t *testing.T, err error, typ string) *openai.Error {
	t.Helper()
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "an API error: %v", err)
	require.Equal(t, http.StatusTooManyRequests, apiErr.StatusCode, apiErr.RawJSON())
	require.Equal(t, "rate_limit_exceeded", apiErr.Code, apiErr.RawJSON())
	require.Equal(t, typ, apiErr.Type, apiErr.RawJSON())
	h := apiErr.Response.Header
	secs, err := strconv.Atoi(h.Get("Retry-After"))
	require.NoError(t, err, "Retry-After: %v", h)
	require.GreaterOrEqual(t, secs, 1)
	ms, err := strconv.Atoi(h.Get("retry-after-ms"))
	require.NoError(t, err, "retry-after-ms: %v", h)
	require.Positive(t, ms)
	require.Empty(t, h.Values("Kvasir-Usage"))
	return apiErr
}

func TestRateLimitRequestsThroughLocal(t *testing.T) {
	p := startLocal(t, rateLimitDoc("requestsPerMinute: 2"))
	warmUp(t, p)
	client := keyed(p, rlLimitedKey)
	ctx := context.Background()
	for i := range 2 {
		var resp *http.Response
		_, err := client.Chat.Completions.New(ctx, chatParams("Hello within my limit", 4), option.WithResponseInto(&resp))
		require.NoError(t, err, "request %d", i)
		require.Equal(t, "2", resp.Header.Get("x-ratelimit-limit-requests"))
		require.Equal(t, strconv.Itoa(1-i), resp.Header.Get("x-ratelimit-remaining-requests"))
		require.NotEmpty(t, resp.Header.Get("x-ratelimit-reset-requests"))
		require.Empty(t, resp.Header.Values("Kvasir-Usage"), "the queue-proxy's usage never reaches a client")
	}
	_, err := client.Chat.Completions.New(ctx, chatParams("Hello beyond my limit", 4))
	apiErr := requireRateLimited(t, err, "requests")
	require.Equal(t, "2", apiErr.Response.Header.Get("x-ratelimit-limit-requests"))
	require.Equal(t, "0", apiErr.Response.Header.Get("x-ratelimit-remaining-requests"))
	require.Contains(t, apiErr.Message, "requests per min (RPM): Limit 2")

	// The other tenant is not limited by it.
	free := keyed(p, rlFreeKey)
	_, err = free.Chat.Completions.New(ctx, chatParams("Hello, unlimited", 4))
	require.NoError(t, err)
	v, _ := p.metric("kvasir_tenant_rejected_total",
		map[string]string{"namespace": "default", "tenant": "limited", "model": "demo", "reason": "rate_limit"})
	require.Equal(t, 1.0, v)
}

func TestRateLimitTokensThroughLocal(t *testing.T) {
	// About 200 prompt tokens per request (the simulator counts 4 bytes a
	// token, as the activator estimates): two fit in 500 input tokens per
	// minute, a third does not for the 12s its deficit takes to refill.
	p := startLocal(t, rateLimitDoc("inputTokensPerMinute: 500, outputTokensPerMinute: 1000"))
	warmUp(t, p)
	client := keyed(p, rlLimitedKey)
	ctx := context.Background()
	question := strings.Repeat("word ", 160)

	_, err := client.Chat.Completions.New(ctx, chatParams(question, 2000))
	apiErr := requireRateLimited(t, err, "tokens")
	require.Contains(t, apiErr.Message, "Request too large", "max_tokens above the output limit never fits")

	var prompt int64
	for i := range 2 {
		var resp *http.Response
		params := chatParams(question, 8)
		if i == 1 { // a stream without include_usage: settled by the queue-proxy's trailer
			stream := client.Chat.Completions.NewStreaming(ctx, params, option.WithResponseInto(&resp))
			for stream.Next() {
			}
			require.NoError(t, stream.Err())
			require.NoError(t, stream.Close())
		} else {
			out, err := client.Chat.Completions.New(ctx, params, option.WithResponseInto(&resp))
			require.NoError(t, err)
			prompt = out.Usage.PromptTokens
			require.InDelta(t, 205, prompt, 35, "the prompt's tokens")
		}
		require.Equal(t, "500", resp.Header.Get("x-ratelimit-limit-tokens"), "the tightest token limit")
		remaining, err := strconv.ParseInt(resp.Header.Get("x-ratelimit-remaining-tokens"), 10, 64)
		require.NoError(t, err)
		require.LessOrEqual(t, remaining, 500-int64(i+1)*prompt+40, "request %d: the prompts are counted", i)
	}
	_, err = client.Chat.Completions.New(ctx, chatParams(question, 8))
	apiErr = requireRateLimited(t, err, "tokens")
	require.Contains(t, apiErr.Message, "input tokens per min (ITPM): Limit 500")

	// The tenant's tokens are counted from the queue-proxy's exact usage,
	// the stream without include_usage included.
	require.Eventually(t, func() bool {
		in, _ := p.metric("kvasir_tenant_tokens_total",
			map[string]string{"namespace": "default", "tenant": "limited", "model": "demo", "kind": "input"})
		return in == float64(2*prompt)
	}, 10*time.Second, 20*time.Millisecond)
}

func TestRateLimitSharedByActivators(t *testing.T) {
	const limit, sent = 4, 12
	for _, tc := range []struct {
		name  string
		redis bool
	}{
		{"one memory store for the activators of kvasir local", false},
		{"redis shared by every activator", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--activators", "3"}
			var rdb *redis.Client
			if tc.redis {
				srv := redistest.Start(t)
				args = append(args, "--ratelimit-redis", srv.Addr, "--ratelimit-fail", "closed")
				rdb = redis.NewClient(&redis.Options{Addr: srv.Addr})
				t.Cleanup(func() { _ = rdb.Close() })
			}
			p := startLocal(t, rateLimitDoc("requestsPerMinute: "+strconv.Itoa(limit)), args...)
			warmUp(t, p)
			client := keyed(p, rlLimitedKey)
			errs := make([]error, sent)
			var wg sync.WaitGroup
			for i := range sent { // spread over the activators one at a time
				wg.Go(func() {
					_, errs[i] = client.Chat.Completions.New(context.Background(), chatParams("Hello, shared limit", 2))
				})
			}
			wg.Wait()
			allowed := 0
			for _, err := range errs {
				if err == nil {
					allowed++
				} else {
					requireRateLimited(t, err, "requests")
				}
			}
			require.Equal(t, limit, allowed, "the limit holds across the 3 activators, not 3 times over")

			fams, err := promtest.Scrape(p.AdminURL + "/metrics")
			require.NoError(t, err)
			rejected, _ := promtest.Sum(fams, "kvasir_tenant_rejected_total")
			require.Equal(t, float64(sent-limit), rejected, "summed over the activators")
			if tc.redis {
				keys, err := rdb.Keys(context.Background(), "kvasir:rl:*").Result()
				require.NoError(t, err)
				require.NotEmpty(t, keys, "the counters live in Redis")
			}
		})
	}
}

// The key of the limited tenant of TestRateLimitSharedByProcesses, which
// each kvasir local reads from its environment (the Tenant's fromEnv).
const (
	rlSharedKeyEnv = "KVASIR_E2E_RL_SHARED_KEY"
	rlSharedKey    = "sk-e2e-rl-shared-5e92c07a1f"
)

// sharedLimitDoc is the fleet every process of TestRateLimitSharedByProcesses
// runs: one always-ready simulated replica, the limited tenant (key from
// rlSharedKeyEnv) and the unlimited one that warms the fleet up.
func sharedLimitDoc(requestsPerMinute int) string {
	return `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine: {type: sim, args: ["--time-scale=20"]}
    scaling: {minScale: 1, maxScale: 1, initialScale: 1}
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: limited}
spec:
  apiKeys: [{fromEnv: ` + rlSharedKeyEnv + `}]
  limits:
    - {model: "*", requestsPerMinute: ` + strconv.Itoa(requestsPerMinute) + `}
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: free}
spec:
  apiKeys: [{sha256: "` + sha256Hex(rlFreeKey) + `"}]
`
}

// TestRateLimitSharedByProcesses runs what activator pods on Kubernetes
// are: separate processes, here three `kvasir local`, each with its own
// activator and fleet, whose only common part is one redis-server. A
// tenant limited to 6 requests a minute sends 18 at once, round robin over
// the three APIs: 6 are allowed in total, not 6 by each process.
func TestRateLimitSharedByProcesses(t *testing.T) {
	const procs, limit, sent = 3, 6, 18
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	t.Setenv(rlSharedKeyEnv, rlSharedKey) // each kvasir local inherits it

	doc := sharedLimitDoc(limit)
	ps := make([]*platform, procs)
	for i := range ps {
		ps[i] = startLocal(t, doc, "--activators", "1", "--ratelimit-redis", srv.Addr, "--ratelimit-fail", "closed")
	}
	// Each fleet's replica is ready once the unlimited tenant has an answer.
	warm := make([]error, procs)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			free := keyed(p, rlFreeKey)
			_, warm[i] = free.Chat.Completions.New(ctx, chatParams("warm up", 2))
		})
	}
	wg.Wait()
	for i, err := range warm {
		require.NoError(t, err, "warming up process %d", i)
	}
	// The limited tenant left nothing in Redis yet.
	keys, err := rdb.Keys(context.Background(), ratelimit.DefaultPrefix+"*").Result()
	require.NoError(t, err)
	require.Empty(t, keys)

	type answer struct {
		proc int
		resp *http.Response
		err  error
	}
	answers := make([]answer, sent)
	start := time.Now()
	for i := range sent {
		p := i % procs // round robin over the processes' APIs
		answers[i].proc = p
		client := keyed(ps[p], rlSharedKey)
		wg.Go(func() {
			_, answers[i].err = client.Chat.Completions.New(context.Background(), chatParams("Hello, shared limit", 2),
				option.WithResponseInto(&answers[i].resp))
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	var remaining []int
	refused := make([]int, procs)
	for i, a := range answers {
		if a.err != nil {
			apiErr := requireRateLimited(t, a.err, "requests")
			require.Equal(t, strconv.Itoa(limit), apiErr.Response.Header.Get("x-ratelimit-limit-requests"), "request %d", i)
			require.Equal(t, "0", apiErr.Response.Header.Get("x-ratelimit-remaining-requests"), "request %d", i)
			require.NotEmpty(t, apiErr.Response.Header.Get("x-ratelimit-reset-requests"), "request %d", i)
			refused[a.proc]++
			continue
		}
		require.Equal(t, strconv.Itoa(limit), a.resp.Header.Get("x-ratelimit-limit-requests"), "request %d", i)
		n, err := strconv.Atoi(a.resp.Header.Get("x-ratelimit-remaining-requests"))
		require.NoError(t, err, "request %d", i)
		remaining = append(remaining, n)
	}
	// One request a minute/limit (10 s) refills: the 18 took far less, so
	// exactly limit were allowed, each seeing the one bucket a step
	// emptier whichever process admitted it.
	require.Less(t, elapsed, 60*time.Second/limit, "the requests ran within one refill")
	require.Len(t, remaining, limit, "the limit holds across the %d processes, not %d times over", procs, procs)
	slices.Sort(remaining)
	require.Equal(t, []int{0, 1, 2, 3, 4, 5}, remaining, "each allowed request saw the others, whichever process took them")

	// Each process counted its own refusals.
	for i, p := range ps {
		v, _ := p.metric("kvasir_tenant_rejected_total",
			map[string]string{"namespace": "default", "tenant": "limited", "model": "demo", "reason": "rate_limit"})
		require.Equal(t, float64(refused[i]), v, "process %d", i)
	}

	// The counters live in Redis: the request bucket of the tenant's rule,
	// expiring when it would be full again.
	key := ratelimit.DefaultPrefix + "{default/limited/*}:r"
	keys, err = rdb.Keys(context.Background(), ratelimit.DefaultPrefix+"*").Result()
	require.NoError(t, err)
	require.Contains(t, keys, key)
	ttl, err := rdb.PTTL(context.Background(), key).Result()
	require.NoError(t, err)
	require.Greater(t, ttl, time.Duration(0), "the bucket's key expires")
	require.LessOrEqual(t, ttl, time.Minute+time.Second)
}
