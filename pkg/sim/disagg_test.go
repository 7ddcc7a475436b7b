package sim

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// kvParams are the kv_transfer_params a prefill engine returns.
type kvParams struct {
	DoRemotePrefill bool    `json:"do_remote_prefill"`
	DoRemoteDecode  bool    `json:"do_remote_decode"`
	RemoteEngineID  string  `json:"remote_engine_id"`
	RemoteBlockIDs  []int32 `json:"remote_block_ids"`
	RemoteHost      string  `json:"remote_host"`
	RemotePort      int     `json:"remote_port"`
	TPSize          int     `json:"tp_size"`
}

// prefillFor sends the prefill half of a disaggregated chat request, as the
// router does (and vLLM's proxies: remote_* fields null), and returns the
// response and its raw kv_transfer_params.
func prefillFor(t *testing.T, ts *testServer, system, user string) (completion, json.RawMessage) {
	t.Helper()
	status, body := ts.post(t, "/v1/chat/completions", chatBody(system, user,
		`"max_tokens":1,"stream":false,"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,`+
			`"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`))
	require.Equal(t, http.StatusOK, status, "%s", body)
	var raw struct {
		KV json.RawMessage `json:"kv_transfer_params"`
	}
	require.NoError(t, json.Unmarshal(body, &raw))
	require.NotEmpty(t, raw.KV, "%s", body)
	return decode[completion](t, body), raw.KV
}

// prefixMatch asks the oracle endpoint about a request body.
func (ts *testServer) prefixMatch(t *testing.T, api, body string) (prompt, cached int) {
	t.Helper()
	status, b := ts.post(t, "/sim/prefix-match?api="+api, body)
	require.Equal(t, http.StatusOK, status, "%s", b)
	m := decode[struct {
		PromptTokens int `json:"prompt_tokens"`
		CachedTokens int `json:"cached_tokens"`
		BlockSize    int `json:"block_size"`
	}](t, b)
	require.Equal(t, ts.cfg.BlockSize, m.BlockSize)
	return m.PromptTokens, m.CachedTokens
}

func TestRemotePrefillReturnsKVTransferParams(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Role = RolePrefill })
	system := strings.Repeat("Answer in French. ", 40)
	c, raw := prefillFor(t, ts, system, "hello")
	require.Len(t, c.Choices, 1)
	assert.Equal(t, "length", *c.Choices[0].FinishReason)
	assert.Len(t, strings.Fields(c.Choices[0].Message.Content), 1)
	assert.Equal(t, 1, c.Usage.CompletionTokens)
	assert.Zero(t, c.Usage.PromptTokensDetails.CachedTokens)

	p := decode[kvParams](t, raw)
	assert.True(t, p.DoRemotePrefill)
	assert.False(t, p.DoRemoteDecode)
	assert.Equal(t, ts.EngineID(), p.RemoteEngineID)
	assert.Len(t, p.RemoteBlockIDs, ceilDiv(c.Usage.PromptTokens, 16), "the blocks holding the prompt")
	u, err := url.Parse(ts.URL)
	require.NoError(t, err)
	host, port, _ := net.SplitHostPort(u.Host)
	assert.Equal(t, host, p.RemoteHost)
	assert.Equal(t, port, strconv.Itoa(p.RemotePort))
	assert.Equal(t, 1, p.TPSize)

	// The blocks were released, their hashes stay cached: the same prefix
	// hits, on the very same blocks.
	require.Eventually(t, func() bool { return ts.value(t, "vllm:kv_cache_usage_perc") == 0 }, 5*time.Second, time.Millisecond)
	_, cached := ts.prefixMatch(t, "chat", chatBody(system, "hello", ""))
	assert.Equal(t, c.Usage.PromptTokens/16*16, cached)
	c2, raw2 := prefillFor(t, ts, system, "hello")
	hit := c2.Usage.PromptTokensDetails.CachedTokens / 16
	assert.Equal(t, (c.Usage.PromptTokens-1)/16, hit, "every full block but a recomputed last one")
	p2 := decode[kvParams](t, raw2)
	assert.Equal(t, p.RemoteBlockIDs[:hit], p2.RemoteBlockIDs[:hit], "the cached blocks are reused")
	assert.Equal(t, p.RemoteEngineID, p2.RemoteEngineID, "stable")

	// A unified engine (vLLM's kv_both) prefills for others too; a normal
	// request gets no kv_transfer_params.
	uni := startServer(t, nil)
	_, raw = prefillFor(t, uni, system, "hello")
	assert.Equal(t, uni.EngineID(), decode[kvParams](t, raw).RemoteEngineID)
	assert.NotEqual(t, ts.EngineID(), uni.EngineID())
	status, body := uni.post(t, "/v1/chat/completions", chatBody(system, "hello", `"max_tokens":3`))
	require.Equal(t, http.StatusOK, status)
	assert.NotContains(t, string(body), "kv_transfer_params")
	assert.Equal(t, 3, decode[completion](t, body).Usage.CompletionTokens)
}

// TestRemoteDecodeReceivesKVInsteadOfPrefill runs the two halves of a
// disaggregated request over a prefill and a decode engine. Times are
// compared in simulated time (the TTFT histogram), exact but for the
// scheduler's wake-up latency x time scale.
func TestRemoteDecodeReceivesKVInsteadOfPrefill(t *testing.T) {
	const scale = 5
	prefill := startServer(t, func(c *Config) { c.Role = RolePrefill; c.TimeScale = scale })
	dec := startServer(t, func(c *Config) { c.Role = RoleDecode; c.TimeScale = scale })
	ph := dec.cfg.Physics
	system := strings.Repeat("You are a careful assistant. ", 552) // ~4000 tokens
	other := strings.Repeat("You are a helpful assistant. ", 552)  // as long, no common block
	opts := `"stream":true,"max_tokens":4,"stream_options":{"include_usage":true}`

	_, kv := prefillFor(t, prefill, system, "first question")
	events, start, err := dec.stream(t, context.Background(), "/v1/chat/completions",
		chatBody(system, "first question", opts+`,"kv_transfer_params":`+string(kv)))
	require.NoError(t, err)
	remoteTTFT := firstContent(t, events).Sub(start)
	u := usageOf(t, events).Usage
	assert.Equal(t, 4, u.CompletionTokens)
	assert.Zero(t, u.PromptTokensDetails.CachedTokens, "nothing was cached here before the transfer")
	simRemote, _ := dec.histogram(t, "vllm:time_to_first_token_seconds")

	// The same engine prefills a prompt as long locally, as vLLM does
	// without kv_transfer_params.
	events, start, err = dec.stream(t, context.Background(), "/v1/chat/completions", chatBody(other, "first question", opts))
	require.NoError(t, err)
	localTTFT := firstContent(t, events).Sub(start)
	require.Equal(t, u.PromptTokens, usageOf(t, events).Usage.PromptTokens)
	sum, _ := dec.histogram(t, "vllm:time_to_first_token_seconds")
	simLocal := sum - simRemote

	// Modelled: the transfer of every prompt token, then one step in which
	// the last prompt token costs what a decoding sequence does.
	transfer := ph.KVTransferOverhead + time.Duration(u.PromptTokens)*ph.KVTransferPerToken
	want := (transfer + ph.DecodeBase + ph.DecodePerSeq).Seconds()
	t.Logf("%d prompt tokens: simulated TTFT remote %.1fms (modelled %.1fms), local %.1fms; client TTFT remote %v, local %v",
		u.PromptTokens, simRemote*1e3, want*1e3, simLocal*1e3, remoteTTFT, localTTFT)
	assert.GreaterOrEqual(t, simRemote, want-1e-9)
	assert.Less(t, simRemote, 2*want, "close to the modelled transfer")
	assert.Greater(t, simLocal, 0.33, "4000 tokens at 12k tok/s")
	assert.Less(t, simRemote, simLocal/5)
	assert.Less(t, remoteTTFT, localTTFT/2, "client-measured")

	// The received blocks are this engine's cache now.
	_, cached := dec.prefixMatch(t, "chat", chatBody(system, "second question", ""))
	assert.Greater(t, cached, u.PromptTokens-32)
	status, body := dec.post(t, "/v1/chat/completions", chatBody(system, "second question", `"max_tokens":2`))
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, cached, decode[completion](t, body).Usage.PromptTokensDetails.CachedTokens)

	// A second transfer of that prefix reports the local hits and only
	// pays for the rest.
	_, kv = prefillFor(t, prefill, system, "third question")
	status, body = dec.post(t, "/v1/chat/completions", chatBody(system, "third question", `"max_tokens":2,"kv_transfer_params":`+string(kv)))
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, cached, decode[completion](t, body).Usage.PromptTokensDetails.CachedTokens)
}

func TestKVTransferRolesAndErrors(t *testing.T) {
	prefill := startServer(t, func(c *Config) { c.Role = RolePrefill })
	dec := startServer(t, func(c *Config) { c.Role = RoleDecode })
	uni := startServer(t, nil)
	_, kv := prefillFor(t, prefill, "system", "user")
	recv := `"max_tokens":2,"kv_transfer_params":` + string(kv)
	send := `"max_tokens":1,"kv_transfer_params":{"do_remote_decode":true}`

	for _, tc := range []struct {
		name   string
		ts     *testServer
		extra  string
		status int
		code   string
		param  string
	}{
		{"decode refuses a remote prefill", dec, send, 400, codeKVRole, "kv_transfer_params.do_remote_decode"},
		{"prefill refuses a remote decode", prefill, recv, 400, codeKVRole, "kv_transfer_params.do_remote_prefill"},
		{"decode takes a remote decode", dec, recv, 200, "", ""},
		{"unified takes a remote decode", uni, recv, 200, "", ""},
		{"unified takes a remote prefill", uni, send, 200, "", ""},
		{"decode prefills locally without params", dec, `"max_tokens":2`, 200, "", ""},
		{"prefill serves plain requests", prefill, `"max_tokens":2,"stream":false`, 200, "", ""},
		{"null params", dec, `"kv_transfer_params":null`, 200, "", ""},
		{"empty params", prefill, `"kv_transfer_params":{}`, 200, "", ""},
		{"no remote half", dec, `"kv_transfer_params":{"do_remote_decode":false,"do_remote_prefill":false}`, 200, "", ""},
		{"not an object", uni, `"kv_transfer_params":[true]`, 400, codeBadKV, "kv_transfer_params"},
		{"flag not a boolean", uni, `"kv_transfer_params":{"do_remote_decode":"true"}`, 400, codeBadKV, "kv_transfer_params.do_remote_decode"},
		{"port not an integer", dec, `"kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[1],"remote_host":"h","remote_port":"8000"}`,
			400, codeBadKV, "kv_transfer_params.remote_port"},
		{"missing field", dec, `"kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[1],"remote_port":8000}`,
			400, codeBadKV, "kv_transfer_params.remote_host"},
		{"streamed prefill", prefill, send + `,"stream":true`, 400, codeBadKV, "stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := tc.ts.post(t, "/v1/chat/completions", chatBody("system", "user", tc.extra))
			require.Equal(t, tc.status, status, "%s", body)
			if tc.status == 200 {
				return
			}
			e := decode[openai.Envelope](t, body).Error
			assert.Equal(t, tc.code, e.Code)
			assert.Equal(t, openai.TypeInvalidRequest, e.Type)
			require.NotNil(t, e.Param)
			assert.Equal(t, tc.param, *e.Param)
			assert.Contains(t, e.Message, strings.TrimPrefix(tc.param, "kv_transfer_params."))
		})
	}
	// Completions take the same parameters.
	status, body := prefill.post(t, "/v1/completions", `{"prompt":"abcdefgh","max_tokens":9,"kv_transfer_params":{"do_remote_decode":true}}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Contains(t, string(body), `"kv_transfer_params":{"do_remote_prefill":true,`)
	assert.Equal(t, 1, decode[completion](t, body).Usage.CompletionTokens)
}

func TestParseKVTransferParams(t *testing.T) {
	full := `"remote_engine_id":"e","remote_block_ids":[0,1,2],"remote_host":"10.0.0.1","remote_port":5557`
	for _, tc := range []struct {
		raw   string
		want  kvXfer
		field string // of the error
	}{
		{`{}`, xferNone, ""},
		{`{"do_remote_decode":true}`, xferSend, ""},
		{`{"do_remote_decode":true,"remote_block_ids":null,"remote_port":null,"extra":1}`, xferSend, ""},
		{`{"do_remote_prefill":true,` + full + `}`, xferRecv, ""},
		{`{"do_remote_prefill":true,` + full + `,"tp_size":1}`, xferRecv, ""},
		{`{"do_remote_prefill":false,` + full + `}`, xferNone, ""},
		{`"x"`, xferNone, "kv_transfer_params"},
		{`{"do_remote_prefill":1}`, xferNone, "kv_transfer_params.do_remote_prefill"},
		{`{"do_remote_prefill":true,"do_remote_decode":true,` + full + `}`, xferNone, "kv_transfer_params.do_remote_prefill"},
		{`{"do_remote_prefill":true,"remote_engine_id":7,"remote_block_ids":[1],"remote_host":"h","remote_port":1}`, xferNone, "kv_transfer_params.remote_engine_id"},
		{`{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[-1],"remote_host":"h","remote_port":1}`, xferNone, "kv_transfer_params.remote_block_ids"},
		{`{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":{},"remote_host":"h","remote_port":1}`, xferNone, "kv_transfer_params.remote_block_ids"},
		{`{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[1],"remote_host":"h","remote_port":70000}`, xferNone, "kv_transfer_params.remote_port"},
		{`{"do_remote_prefill":true,` + full + `,"tp_size":0}`, xferNone, "kv_transfer_params.tp_size"},
		{`{"do_remote_prefill":true,"remote_block_ids":[1],"remote_host":"h","remote_port":1}`, xferNone, "kv_transfer_params.remote_engine_id"},
		{`{"do_remote_decode":true,"remote_port":"x"}`, xferNone, "kv_transfer_params.remote_port"},
	} {
		got, err := parseKVTransferParams([]byte(tc.raw))
		if tc.field == "" {
			assert.NoError(t, err, tc.raw)
			assert.Equal(t, tc.want, got, tc.raw)
			continue
		}
		var pe *kvParamError
		if assert.ErrorAs(t, err, &pe, tc.raw) {
			assert.Equal(t, tc.field, pe.field, tc.raw)
		}
	}
}

func TestPrefixMatchReflectsCache(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.LoRAModules = []LoRAModule{{Name: "sql", Path: "/sql"}} })
	system := strings.Repeat("Be terse and exact. ", 30)
	q1 := chatBody(system, "first question", `"max_tokens":2`)

	n, cached := ts.prefixMatch(t, "chat", q1)
	assert.Zero(t, cached, "nothing served yet")
	status, body := ts.post(t, "/v1/chat/completions", q1)
	require.Equal(t, http.StatusOK, status, "%s", body)
	served := decode[completion](t, body).Usage
	assert.Equal(t, served.PromptTokens, n)
	_, cached = ts.prefixMatch(t, "chat", q1)
	assert.Equal(t, n/16*16, cached, "every full block of the prompt, the last one too")

	// Another question after the same system prompt shares its blocks.
	_, shared := ts.prefixMatch(t, "chat", chatBody(system, "something else", ""))
	assert.Greater(t, shared, len(system)/4-16)
	assert.Less(t, shared, cached)

	// Serving a different prefix leaves that knowledge as it was.
	other := `{"prompt":"` + strings.Repeat("zyxw", 300) + `","max_tokens":1}`
	_, cached = ts.prefixMatch(t, "completions", other)
	assert.Zero(t, cached)
	status, _ = ts.post(t, "/v1/completions", other)
	require.Equal(t, http.StatusOK, status)
	n2, cached := ts.prefixMatch(t, "completions", other)
	assert.Equal(t, 300, n2)
	assert.Equal(t, 288, cached)
	_, again := ts.prefixMatch(t, "chat", q1)
	assert.Equal(t, n/16*16, again)

	// The model is resolved as for generation: an adapter salts the hashes.
	_, cached = ts.prefixMatch(t, "chat", strings.Replace(q1, `"model":"sim-model"`, `"model":"sql"`, 1))
	assert.Zero(t, cached, "KV computed for the base model is not the adapter's")

	for _, tc := range []struct {
		name, query, body string
		status            int
		code              string
	}{
		{"no api", "", q1, 400, "invalid_api"},
		{"unknown api", "?api=embeddings", q1, 400, "invalid_api"},
		{"malformed body", "?api=chat", `{"messages":`, 400, "invalid_json"},
		{"chat body for completions", "?api=completions", q1, 400, "missing_prompt"},
		{"empty prompt", "?api=completions", `{"prompt":""}`, 400, "invalid_prompt"},
		{"unknown model", "?api=chat", strings.Replace(q1, "sim-model", "nope", 1), 404, "model_not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := ts.post(t, "/sim/prefix-match"+tc.query, tc.body)
			require.Equal(t, tc.status, status, "%s", body)
			assert.Equal(t, tc.code, decode[openai.Envelope](t, body).Error.Code)
		})
	}

	loading := startServer(t, func(c *Config) { c.StartupDelay = time.Hour })
	status, body = loading.post(t, "/sim/prefix-match?api=chat", q1)
	assert.Equal(t, http.StatusServiceUnavailable, status)
	assert.Equal(t, openai.TypeUnavailable, decode[openai.Envelope](t, body).Error.Type)
}

// TestPrefixMatchDoesNotTouchLRU fills a small cache with two prompts,
// looks the older one up many times, and lets a third evict: the older one
// still goes first.
func TestPrefixMatchDoesNotTouchLRU(t *testing.T) {
	// 64 blocks of 16 tokens; each 400-token prompt takes 25 blocks.
	ts := startServer(t, func(c *Config) { c.KVBlocks = 64; c.MaxModelLen = 1024 })
	body := func(letter string) string {
		return `{"prompt":"` + strings.Repeat(letter, 1600) + `","max_tokens":1}`
	}
	for _, letter := range []string{"a", "b"} {
		status, resp := ts.post(t, "/v1/completions", body(letter))
		require.Equal(t, http.StatusOK, status, "%s", resp)
	}
	for range 10 {
		_, cached := ts.prefixMatch(t, "completions", body("a"))
		require.Equal(t, 400, cached)
	}
	status, resp := ts.post(t, "/v1/completions", body("c"))
	require.Equal(t, http.StatusOK, status, "%s", resp)
	// "c" took the 14 never-used blocks and the 11 least recently used:
	// the tail of "a".
	_, a := ts.prefixMatch(t, "completions", body("a"))
	_, b := ts.prefixMatch(t, "completions", body("b"))
	assert.Equal(t, 14*16, a)
	assert.Equal(t, 400, b)
}
