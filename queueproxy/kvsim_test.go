package queueproxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
)

// startSim runs the engine simulator in-process (no latency) and returns
// its URL.
func startSim(t *testing.T, mutate func(*sim.Config)) string {
	t.Helper()
	return simtest.Start(t, simtest.Config(mutate))
}

// awaitKVShape waits until the proxy knows the engine's block size.
func (p *proxy) awaitKVShape(t *testing.T, bs int) {
	t.Helper()
	require.Eventually(t, func() bool {
		sh := p.kv.shape.Load()
		return sh != nil && sh.blockSize == bs
	}, waitFor, tick)
}

// simUsage is the usage of a simulator response.
type simUsage struct {
	PromptTokens        int `json:"prompt_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

// chat sends a non-streaming chat request and returns its usage.
func (p *proxy) chat(t *testing.T, body string) simUsage {
	t.Helper()
	resp := p.post(t, testCtx(t), "/v1/chat/completions", body)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "body: %s", b)
	var c struct{ Usage simUsage }
	require.NoError(t, json.Unmarshal(b, &c))
	return c.Usage
}

// chatStream sends a streaming chat request and reads it to the end.
func (p *proxy) chatStream(t *testing.T, body string) {
	t.Helper()
	resp := p.post(t, testCtx(t), "/v1/chat/completions", body)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	r := bufio.NewReader(resp.Body)
	for {
		if ev := readEvent(t, r); ev == "data: [DONE]\n\n" {
			return
		}
	}
}

// blocksOf are the simulator's block hashes of a one-message chat prompt.
func blocksOf(content string, bs int, adapter string) []uint64 {
	h := prompt.BlockHashes([]byte(prompt.RenderChat([]prompt.Message{{Role: "user", Content: content}})), bs)
	prompt.SaltHashes(h, adapter)
	return h
}

func TestKVSimulatorRepeatedPrompt(t *testing.T) {
	engine := startSim(t, nil)
	p := newProxy(t, engine, true, "--kv-flush-interval=1ms")
	p.awaitKVShape(t, 16) // from vllm:cache_config_info
	f := followKV(t, p.srv.URL)

	content := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 40) // 1,800 bytes
	want := blocksOf(content, 16, "")
	require.Len(t, want, 28)
	body := openaitest.ChatBody("sim-model", `"max_tokens":4`, openaitest.User(content))

	u := p.chat(t, body)
	assert.Zero(t, u.PromptTokensDetails.CachedTokens)
	p.awaitRequests(t, 1)
	u = p.chat(t, body)
	assert.Equal(t, len(want)*16, u.PromptTokensDetails.CachedTokens, "the whole prompt but its partial block")
	p.awaitRequests(t, 2)
	p.chatStream(t, openaitest.ChatBody("", `"max_tokens":4,"stream":true`, openaitest.User(content))) // usage of a stream, the model left out
	p.awaitRequests(t, 3)

	assert.Equal(t, set(want...), set(p.kv.hashes()...))
	assert.Zero(t, testutil.ToFloat64(p.metrics.kvCorrections))
	require.Eventually(t, func() bool { return f.matches(p.kv) }, waitFor, tick)
	f.mu.Lock()
	defer f.mu.Unlock()
	assert.Len(t, f.adds, len(want))
	for _, h := range want {
		assert.Equal(t, 1, f.adds[h], "block %#x added once", h)
	}
	assert.Zero(t, f.removes)

	resp := p.get(t, MetricsPath)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.Contains(t, string(got), "\nkvasir_queueproxy_kv_model_blocks 28\n")
	assert.Contains(t, string(got), "\nkvasir_queueproxy_kv_corrections_total 0\n")
}

func TestKVSimulatorCorrection(t *testing.T) {
	// An engine of 40 blocks behind a model that believes in 1,000: each
	// prompt below takes 11 (10 full, 1 partial), so the fourth and fifth
	// evict the first (Z) and part of the second (A).
	engine := startSim(t, func(c *sim.Config) { c.KVBlocks, c.MaxModelLen = 40, 640 })
	p := newProxy(t, engine, true, "--kv-capacity-blocks=1000")
	p.awaitKVShape(t, 16)

	prompts := map[string]string{}
	for _, name := range []string{"Z", "A", "B", "C", "D"} {
		prompts[name] = strings.Repeat(name, 620) // rendered: 644 bytes, 161 tokens
		require.Len(t, blocksOf(prompts[name], 16, ""), 10)
	}
	n := uint64(0)
	send := func(name string) simUsage {
		t.Helper()
		u := p.chat(t, openaitest.ChatBody("", `"max_tokens":1`, openaitest.User(prompts[name])))
		n++
		p.awaitRequests(t, n)
		return u
	}
	for _, name := range []string{"Z", "A", "B", "C", "D"} {
		send(name)
	}
	assert.Equal(t, 50, p.KVBlocks(), "the model does not know of the evictions yet")
	assert.Zero(t, testutil.ToFloat64(p.metrics.kvCorrections))

	// A again: the engine lost A's last full block, so the model, which
	// held all of A, learns that everything older than that block is gone
	// from the engine: all of Z.
	u := send("A")
	assert.Equal(t, 9*16, u.PromptTokensDetails.CachedTokens)
	assert.Equal(t, 1.0, testutil.ToFloat64(p.metrics.kvCorrections))
	held := set(p.kv.hashes()...)
	for _, h := range blocksOf(prompts["Z"], 16, "") {
		assert.NotContains(t, held, h)
	}
	for _, name := range []string{"A", "B", "C", "D"} {
		for _, h := range blocksOf(prompts[name], 16, "") {
			assert.Contains(t, held, h, name)
		}
	}
	assert.Equal(t, 40, p.KVBlocks())

	// The model is now right about Z: it predicts nothing and the engine
	// finds nothing, so no correction.
	u = send("Z")
	assert.Zero(t, u.PromptTokensDetails.CachedTokens)
	assert.Equal(t, 1.0, testutil.ToFloat64(p.metrics.kvCorrections))
}

func TestKVSimulatorLoRASalted(t *testing.T) {
	engine := startSim(t, func(c *sim.Config) {
		c.LoRAModules = []sim.LoRAModule{{Name: "sql", Path: "/adapters/sql"}}
	})
	p := newProxy(t, engine, true)
	p.awaitKVShape(t, 16)
	require.Eventually(t, func() bool {
		em := p.kv.models.Load()
		return em != nil && em.listed
	}, waitFor, tick)

	content := strings.Repeat("SELECT * FROM t; ", 20)
	base, salted := blocksOf(content, 16, ""), blocksOf(content, 16, "sql")
	require.NotEmpty(t, base)
	assert.NotEqual(t, base[0], salted[0])

	p.chat(t, openaitest.ChatBody("sql", `"max_tokens":2`, openaitest.User(content)))
	p.awaitRequests(t, 1)
	assert.Equal(t, set(salted...), set(p.kv.hashes()...))

	// The same prompt on the base model is other blocks, and the engine
	// agrees: nothing cached.
	u := p.chat(t, openaitest.ChatBody("sim-model", `"max_tokens":2`, openaitest.User(content)))
	assert.Zero(t, u.PromptTokensDetails.CachedTokens)
	p.awaitRequests(t, 2)
	assert.Equal(t, set(append(salted, base...)...), set(p.kv.hashes()...))

	// A model the engine does not list is not modelled (the engine says 404).
	resp := p.post(t, testCtx(t), "/v1/chat/completions", openaitest.ChatBody("nope", "", openaitest.User("other "+content)))
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	p.awaitRequests(t, 3)
	assert.Equal(t, len(base)+len(salted), p.KVBlocks())
}
