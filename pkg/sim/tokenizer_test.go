package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/tokenizer"
)

// trainedTokenizer is a tokenizer.json trained once for the package's tests.
var trainedTokenizer = sync.OnceValues(func() ([]byte, error) {
	return tokenizer.Train(tokenizer.Corpus(), 800)
})

// testTokenizer writes a tokenizer.json trained by tokenizer.Train to a
// fresh directory and returns its path and the tokenizer it holds.
func testTokenizer(t *testing.T) (string, *tokenizer.Tokenizer) {
	t.Helper()
	b, err := trainedTokenizer()
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	tk, err := tokenizer.LoadBytes(b)
	require.NoError(t, err)
	return path, tk
}

// startTokenizerServer runs a simulator in tokenizer mode with blocks of 4
// tokens.
func startTokenizerServer(t *testing.T, mutate func(*Config)) (*testServer, *tokenizer.Tokenizer) {
	t.Helper()
	path, tk := testTokenizer(t)
	ts := startServer(t, func(c *Config) {
		c.ZeroLatency = true
		c.BlockSize = 4
		c.MaxModelLen = 4096
		c.Tokenizer = path
		if mutate != nil {
			mutate(c)
		}
	})
	require.IsType(t, &vocabTokens{}, ts.tok)
	return ts, tk
}

// english is the start of the tokenizer's corpus, at most n bytes cut
// before a space: whole words, so that a text continuing it with a space
// has its tokens as a prefix.
func english(n int) string {
	s := strings.Join(tokenizer.Corpus(), " ")
	return s[:strings.LastIndexByte(s[:n+1], ' ')]
}

// usageOfBody posts a generation request and returns its usage.
func (ts *testServer) usageOfBody(t *testing.T, path, body string) (promptTokens, cached int) {
	t.Helper()
	code, resp := ts.post(t, path, body)
	require.Equal(t, http.StatusOK, code, "%s", resp)
	c := decode[completion](t, resp)
	require.NotNil(t, c.Usage)
	return c.Usage.PromptTokens, c.Usage.PromptTokensDetails.CachedTokens
}

func TestTokenizerModeCountsAndCachesRealTokens(t *testing.T) {
	const bs = 4
	ts, tk := startTokenizerServer(t, nil)
	msgs := func(system, user string) string {
		raw, _ := json.Marshal([]map[string]string{{"role": "system", "content": system}, {"role": "user", "content": user}})
		return string(raw)
	}
	render := func(system, user string) string {
		return prompt.RenderChat([]prompt.Message{{Role: "system", Content: system}, {Role: "user", Content: user}})
	}
	completion := func(raw string) string {
		text, err := prompt.AppendCompletion(nil, []byte(raw))
		require.NoError(t, err)
		return string(text)
	}
	for _, tc := range []struct {
		name, api string
		body      string // without max_tokens
		text      string // the canonical text
	}{
		{"string", "completions", `{"prompt":` + string(jsonString(english(300))) + `}`, english(300)},
		{"strings", "completions", `{"prompt":["<|begin_of_text|>The engine ", "café 😀 sees the text"]}`,
			"<|begin_of_text|>The engine café 😀 sees the text"},
		// Token ids are the canonical text's 4 bytes each, tokenized.
		{"token ids", "completions", `{"prompt":[104, 4294967295, 0, 1819243560]}`,
			completion(`[104, 4294967295, 0, 1819243560]`)},
		{"chat", "chat", `{"model":"sim-model","messages":` + msgs("You answer briefly.", "What is a block of the cache?") + `}`,
			render("You answer briefly.", "What is a block of the cache?")},
		{"chat without generation prompt", "chat",
			`{"messages":` + msgs("Be thorough.", "How long is a step?") + `,"add_generation_prompt":false}`,
			strings.TrimSuffix(render("Be thorough.", "How long is a step?"), prompt.GenerationPrompt)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tk.AppendEncode(nil, []byte(tc.text))
			require.NotEmpty(t, want)
			require.NotEqual(t, prompt.AppendTokens(nil, []byte(tc.text)), want, "not the deterministic tokenizer's")

			tok := ts.tokenize(t, tc.body)
			assert.Equal(t, want, tok.Tokens, "/tokenize returns the real ids")

			path := cmplPath
			if tc.api == "chat" {
				path = chatPath
			}
			body := strings.TrimSuffix(tc.body, "}") + `,"max_tokens":1}`
			_, before := ts.prefixMatch(t, tc.api, tc.body) // chats share "<|system|>\n"
			n, cached := ts.usageOfBody(t, path, body)
			assert.Equal(t, len(want), n, "prompt_tokens")
			assert.Equal(t, min(before, (len(want)-1)/bs*bs), cached)

			// Repeated: every full block of real tokens but a recomputed
			// last one hits.
			n, cached = ts.usageOfBody(t, path, body)
			assert.Equal(t, len(want), n)
			assert.Equal(t, (len(want)-1)/bs*bs, cached, "cached_tokens")

			// The oracle finds every full block under the same keys.
			pn, pc := ts.prefixMatch(t, tc.api, tc.body)
			assert.Equal(t, len(want), pn)
			assert.Equal(t, len(want)/bs*bs, pc)
		})
	}

	// token_strs are the tokens' texts: together, the prompt.
	text := english(120)
	tok := ts.tokenize(t, `{"prompt":`+string(jsonString(text))+`,"return_token_strs":true}`)
	require.NotNil(t, tok.TokenStrs)
	require.Len(t, *tok.TokenStrs, tok.Count)
	assert.Equal(t, text, strings.Join(*tok.TokenStrs, ""))
	assert.NotEqual(t, prompt.TokenCount(text), tok.Count)

	// The empty prompt has no token.
	code, body := ts.post(t, "/tokenize", `{"prompt":""}`)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.JSONEq(t, `{"count":0,"max_model_len":4096,"tokens":[],"token_strs":null}`, string(body))

	// Embeddings count real tokens too.
	inputs := []string{english(50), "<|eot_id|>hi"}
	total := 0
	for _, in := range inputs {
		total += len(tk.AppendEncode(nil, []byte(in)))
	}
	raw, _ := json.Marshal(map[string]any{"input": inputs})
	code, body = ts.post(t, "/v1/embeddings", string(raw))
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.Equal(t, total, decode[struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}](t, body).Usage.PromptTokens)
}

func TestTokenizerModeMaxModelLen(t *testing.T) {
	const maxLen = 40
	ts, tk := startTokenizerServer(t, func(c *Config) { c.MaxModelLen = maxLen })
	// The trained tokenizer has fewer than 4 bytes a token: limits the
	// deterministic tokenizer would pass are refused.
	text := english(80)
	n := len(tk.AppendEncode(nil, []byte(text)))
	require.Less(t, n, maxLen)
	require.LessOrEqual(t, prompt.TokenCount(text)+maxLen-n+1, maxLen)
	p := string(jsonString(text))

	got, _ := ts.usageOfBody(t, cmplPath, fmt.Sprintf(`{"prompt":%s,"max_tokens":%d}`, p, maxLen-n))
	assert.Equal(t, n, got, "prompt + max_tokens = max-model-len fits")
	code, body := ts.post(t, cmplPath, fmt.Sprintf(`{"prompt":%s,"max_tokens":%d}`, p, maxLen-n+1))
	require.Equal(t, http.StatusBadRequest, code, "%s", body)
	e := decode[openai.Envelope](t, body).Error
	assert.Equal(t, codeContextLength, e.Code)
	assert.Contains(t, e.Message, fmt.Sprintf("your request has %d input tokens (%d > %d - %d)", n, maxLen-n+1, maxLen, n))

	// Without max_tokens the output fills the rest of the context.
	code, body = ts.post(t, cmplPath, `{"prompt":`+p+`}`)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.Equal(t, min(ts.cfg.DefaultMaxTokens, maxLen-n), decode[completion](t, body).Usage.CompletionTokens)

	long := english(140)
	ln := len(tk.AppendEncode(nil, []byte(long)))
	require.GreaterOrEqual(t, ln, maxLen)
	require.Less(t, prompt.TokenCount(long), maxLen)
	code, body = ts.post(t, cmplPath, `{"prompt":`+string(jsonString(long))+`}`)
	require.Equal(t, http.StatusBadRequest, code, "%s", body)
	e = decode[openai.Envelope](t, body).Error
	assert.Equal(t, codeContextLength, e.Code)
	assert.Contains(t, e.Message, fmt.Sprintf("your request has %d input tokens", ln))
}

func TestTokenizerModeKVEvents(t *testing.T) {
	const bs = 4
	f := newFollower()
	ts, _ := startTokenizerServer(t, func(c *Config) {
		c.KVBlocks = 64
		c.MaxModelLen = 256
		c.LoRAModules = []LoRAModule{{Name: "fr", Path: "/fr"}}
		c.KVEventsEndpoint = "tcp://127.0.0.1:0"
		c.KVEventsTopic = "kv@sim"
	})
	subscribeBound(t, "tcp://"+ts.kvPub.Addr().String(), "kv", f)
	require.Eventually(t, func() bool { return slices.Contains(ts.kvPub.Topics(), "kv") },
		eventTimeout, time.Millisecond, "the subscription reaches the engine")

	// checkStored checks that the request's events store exactly the blocks
	// of the body's /tokenize ids that were not resident, under keys that
	// chain from their parent with prompt.ChainTokens, and that the oracle
	// finds all of them.
	checkStored := func(t *testing.T, path, api, body, lora string, resident map[uint64]bool) []uint64 {
		t.Helper()
		tok := ts.tokenize(t, body)
		full := len(tok.Tokens) / bs * bs
		keys := prompt.AppendTokenBlockHashes(nil, tok.Tokens, bs)
		prompt.SaltHashes(keys, lora)
		first := 0
		for first < len(keys) && resident[keys[first]] {
			first++
		}
		require.Less(t, first, len(keys), "something new to store")

		code, resp := ts.post(t, path, strings.TrimSuffix(body, "}")+`,"max_tokens":1}`)
		require.Equal(t, http.StatusOK, code, "%s", resp)
		events, _ := f.sync(t, ts)
		want := kvevents.BlockStored{Hashes: hashesOf(keys[first:]), TokenIDs: tok.Tokens[first*bs : full],
			BlockSize: bs, LoRAName: lora, Medium: "GPU"}
		if first > 0 {
			want.Parent = hashPtr(keys[first-1])
		}
		require.Equal(t, []kvevents.Event{want}, events)

		// A subscriber recomputes the keys from the ids alone.
		stored := events[0].(kvevents.BlockStored)
		prev := uint64(0)
		if stored.Parent != nil {
			prev = stored.Parent.Uint64() ^ prompt.Salt(lora)
		}
		for i, h := range stored.Hashes {
			prev = prompt.ChainTokens(prev, stored.TokenIDs[i*bs:(i+1)*bs])
			assert.Equal(t, h.Uint64(), prev^prompt.Salt(lora), "block %d", i)
		}
		pn, cached := ts.prefixMatch(t, api, body)
		assert.Equal(t, len(tok.Tokens), pn)
		assert.Equal(t, full, cached, "the oracle finds the stored blocks")
		return keys
	}

	resident := map[uint64]bool{}
	note := func(keys []uint64) {
		for _, k := range keys {
			resident[k] = true
		}
	}
	a := english(160)
	ka := checkStored(t, cmplPath, "completions", `{"prompt":`+string(jsonString(a))+`}`, "", resident)
	note(ka)
	// B continues A: only its new blocks are stored, their parent A's.
	b := a + " and then some more words of the same story"
	kb := checkStored(t, cmplPath, "completions", `{"model":"sim-model","prompt":`+string(jsonString(b))+`}`, "", resident)
	require.Equal(t, ka, kb[:len(ka)], "a shared prefix of real tokens")
	note(kb)
	// A chat request under the adapter: salted keys, the same ids.
	chat := `{"model":"fr","messages":[{"role":"user","content":` + string(jsonString(english(90))) + `}]}`
	kc := checkStored(t, chatPath, "chat", chat, "fr", resident)
	note(kc)
	assert.NotEqual(t, ts.tokenize(t, chat).Tokens, prompt.AppendTokens(nil, []byte(prompt.RenderChat(
		[]prompt.Message{{Role: "user", Content: english(90)}}))))
	_, cached := ts.prefixMatch(t, "chat", strings.Replace(chat, `"fr"`, `"sim-model"`, 1))
	assert.Zero(t, cached, "the base model's keys are not the adapter's")
}

func TestTokenizerModeDisaggregated(t *testing.T) {
	path, tk := testTokenizer(t)
	mutate := func(role string) func(*Config) {
		return func(c *Config) { c.ZeroLatency = true; c.Role = role; c.Tokenizer = path }
	}
	prefill := startServer(t, mutate(RolePrefill))
	dec := startServer(t, mutate(RoleDecode))
	system := english(2000)
	n := len(tk.AppendEncode(nil, []byte(prompt.RenderChat([]prompt.Message{{Role: "system", Content: system}, {Role: "user", Content: "q"}}))))
	require.Greater(t, n, 64)

	c, kv := prefillFor(t, prefill, system, "q")
	assert.Equal(t, n, c.Usage.PromptTokens)
	assert.Len(t, decode[kvParams](t, kv).RemoteBlockIDs, ceilDiv(n, 16), "the blocks holding the real tokens")
	_, cached := prefill.prefixMatch(t, "chat", chatBody(system, "q", ""))
	assert.Equal(t, n/16*16, cached)

	status, body := dec.post(t, chatPath, chatBody(system, "q", `"max_tokens":2,"kv_transfer_params":`+string(kv)))
	require.Equal(t, http.StatusOK, status, "%s", body)
	u := decode[completion](t, body).Usage
	assert.Equal(t, n, u.PromptTokens)
	assert.Zero(t, u.PromptTokensDetails.CachedTokens)
	// The received blocks are registered under the same keys.
	_, cached = dec.prefixMatch(t, "chat", chatBody(system, "q", ""))
	assert.Equal(t, n/16*16, cached)
	pn, cached2 := dec.usageOfBody(t, chatPath, chatBody(system, "q", `"max_tokens":1`))
	assert.Equal(t, n, pn)
	assert.Equal(t, (n-1)/16*16, cached2)
}

func TestTokenizerFlag(t *testing.T) {
	path, tk := testTokenizer(t)
	c, err := parseFlags(t, "--tokenizer", path)
	require.NoError(t, err)
	assert.Equal(t, path, c.Tokenizer)
	require.NoError(t, c.Validate())
	assert.Empty(t, DefaultConfig().Tokenizer)

	var help bytes.Buffer
	require.NoError(t, Main(context.Background(), []string{"-h"}, &help))
	assert.Contains(t, help.String(), "-tokenizer")

	// Unreadable or unsupported files stop the start, naming the flag.
	unigram := filepath.Join(t.TempDir(), "tokenizer.json")
	require.NoError(t, os.WriteFile(unigram, []byte(`{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],`+
		`"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"Unigram","vocab":[]}}`), 0o600))
	for _, bad := range []string{filepath.Join(t.TempDir(), "missing.json"), unigram, t.TempDir()} {
		err := Main(context.Background(), []string{"--port", "0", "--tokenizer", bad}, &bytes.Buffer{})
		assert.ErrorContains(t, err, "--tokenizer", bad)
		cfg := DefaultConfig()
		cfg.Tokenizer = bad
		_, err = New(cfg)
		assert.ErrorContains(t, err, "--tokenizer", bad)
	}

	// The command loads it, also from the directory holding it (as vLLM's
	// --tokenizer takes a model directory).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result := startMain(t, ctx, "--zero-latency", "--tokenizer", filepath.Dir(path))
	resp, err := http.Post(base+"/tokenize", "application/json", strings.NewReader(`{"prompt":"The engine sees the text"}`))
	require.NoError(t, err)
	var tok tokenizeResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tok))
	resp.Body.Close()
	assert.Equal(t, tk.AppendEncode(nil, []byte("The engine sees the text")), tok.Tokens)
	cancel()
	require.NoError(t, <-result)

	// The default is the deterministic tokenizer.
	ts := startServer(t, nil)
	assert.Equal(t, byteTokens{}, ts.tok)
}

func TestByteTokensAllocateOnlyTheirResults(t *testing.T) {
	var tok tokens = byteTokens{}
	text := []byte(strings.Repeat("abcdefgh", 100))
	var p promptTokens
	assert.Zero(t, testing.AllocsPerRun(100, func() {
		p = tok.tokenize(text)
		tok.release(p)
	}))
	assert.Equal(t, 200, p.n)
	var hashes []uint64
	assert.Equal(t, 1.0, testing.AllocsPerRun(100, func() { hashes = tok.blockHashes(p, 16) }))
	assert.Equal(t, prompt.BlockHashes(text, 16), hashes)
	ids := make([]uint32, 0, 200)
	assert.Zero(t, testing.AllocsPerRun(100, func() { ids = tok.appendIDs(ids[:0], p, 200) }))
	assert.Equal(t, prompt.AppendTokens(nil, text), ids)
}

func TestVocabTokensReuseTheirBuffers(t *testing.T) {
	_, tk := testTokenizer(t)
	tok := newVocabTokens(tk)
	text := []byte(english(1000))
	want := tk.AppendEncode(nil, text)
	p := tok.tokenize(text)
	require.Equal(t, want, p.ids)
	tok.release(p)
	allocs := testing.AllocsPerRun(100, func() {
		p := tok.tokenize(text)
		tok.release(p)
	})
	// None but the pool's (which drops buffers at random under -race).
	t.Logf("allocations per tokenization of %d bytes: %.1f", len(text), allocs)
	assert.Equal(t, prompt.AppendTokenBlockHashes(nil, want, 16), tok.blockHashes(tok.tokenize(text), 16))
}
