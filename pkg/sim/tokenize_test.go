package sim

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

type tokenizeResponse struct {
	Count       int       `json:"count"`
	MaxModelLen int       `json:"max_model_len"`
	Tokens      []uint32  `json:"tokens"`
	TokenStrs   *[]string `json:"token_strs"`
}

func (ts *testServer) tokenize(t *testing.T, body string) tokenizeResponse {
	t.Helper()
	code, resp := ts.post(t, "/tokenize", body)
	require.Equal(t, http.StatusOK, code, "%s", resp)
	r := decode[tokenizeResponse](t, resp)
	require.Equal(t, len(r.Tokens), r.Count)
	require.Equal(t, ts.cfg.MaxModelLen, r.MaxModelLen)
	return r
}

// promptTokens returns the prompt_tokens of a generation request's usage.
func (ts *testServer) promptTokens(t *testing.T, path, body string) int {
	t.Helper()
	code, resp := ts.post(t, path, body)
	require.Equal(t, http.StatusOK, code, "%s", resp)
	c := decode[completion](t, resp)
	require.NotNil(t, c.Usage)
	return c.Usage.PromptTokens
}

func TestTokenizeCompletions(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ZeroLatency = true; c.MaxModelLen = 4096 })
	for _, tc := range []struct {
		prompt string // JSON
		text   string
	}{
		{`"hello world, tokens!"`, "hello world, tokens!"},
		{`"odd length"`, "odd length"},
		{`["ab","cdef","g"]`, "abcdefg"},
		{`[104, 4294967295, 0]`, "\x68\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"},
		{`"caf\u00e9 \ud83d\ude00"`, "café 😀"},
	} {
		body := `{"model":"sim-model","prompt":` + tc.prompt + `}`
		r := ts.tokenize(t, body)
		assert.Equal(t, prompt.AppendTokens(nil, []byte(tc.text)), r.Tokens, tc.prompt)
		assert.Nil(t, r.TokenStrs)
		// What /v1/completions counts for the same prompt.
		assert.Equal(t, r.Count, ts.promptTokens(t, cmplPath, `{"prompt":`+tc.prompt+`,"max_tokens":1}`), tc.prompt)
	}
	assert.Equal(t, []uint32{104, 4294967295, 0}, ts.tokenize(t, `{"prompt":[104,4294967295,0]}`).Tokens,
		"token ids round-trip")

	code, body := ts.post(t, "/tokenize", `{"prompt":""}`)
	require.Equal(t, http.StatusOK, code, "%s", body)
	assert.JSONEq(t, `{"count":0,"max_model_len":4096,"tokens":[],"token_strs":null}`, string(body))

	r := ts.tokenize(t, `{"prompt":"abcdefghij","return_token_strs":true,"add_special_tokens":false}`)
	require.NotNil(t, r.TokenStrs)
	assert.Equal(t, []string{"abcd", "efgh", "ij"}, *r.TokenStrs)
}

func TestTokenizeChat(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ZeroLatency = true })
	msgs := []prompt.Message{{Role: "system", Content: "You answer in one word."}, {Role: "user", Content: "What colour is the sky on a clear day?"}}
	raw, err := json.Marshal([]map[string]string{{"role": "system", "content": msgs[0].Content}, {"role": "user", "content": msgs[1].Content}})
	require.NoError(t, err)
	rendered := prompt.RenderChat(msgs)
	for _, tc := range []struct {
		extra string
		text  string
	}{
		{``, rendered},
		{`,"add_generation_prompt":true`, rendered},
		{`,"add_generation_prompt":false`, strings.TrimSuffix(rendered, prompt.GenerationPrompt)},
		{`,"add_generation_prompt":false,"add_special_tokens":true`, strings.TrimSuffix(rendered, prompt.GenerationPrompt)},
	} {
		body := `{"model":"sim-model","messages":` + string(raw) + tc.extra
		r := ts.tokenize(t, body+`}`)
		assert.Equal(t, prompt.AppendTokens(nil, []byte(tc.text)), r.Tokens, tc.extra)
		// What /v1/chat/completions counts for the same body.
		assert.Equal(t, r.Count, ts.promptTokens(t, chatPath, body+`,"max_tokens":1}`), tc.extra)

		// The prefix index's keys: the token ids' block hashes are the
		// rendered text's, for its full blocks (a last token shorter than 4
		// bytes is zero-padded, and ends no block of text).
		whole := r.Tokens[:len(tc.text)/prompt.BytesPerToken]
		for _, bs := range []int{1, 3, 16} {
			assert.Equal(t, nilIfEmpty(prompt.BlockHashes([]byte(tc.text), bs)), prompt.AppendTokenBlockHashes(nil, whole, bs),
				"block size %d %s", bs, tc.extra)
		}
	}
}

func nilIfEmpty(v []uint64) []uint64 {
	if len(v) == 0 {
		return nil
	}
	return v
}

func TestTokenizeModels(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.ZeroLatency = true
		c.LoRAModules = []LoRAModule{{Name: "fr", Path: "/fr"}}
	})
	base := ts.tokenize(t, `{"prompt":"same text"}`)
	assert.Equal(t, base, ts.tokenize(t, `{"model":"fr","prompt":"same text"}`), "an adapter tokenizes as its base model")
	assert.Equal(t, base, ts.tokenize(t, `{"model":null,"prompt":"same text"}`))

	code, body := ts.post(t, "/tokenize", `{"model":"nope","prompt":"x"}`)
	assert.Equal(t, http.StatusNotFound, code)
	assert.Equal(t, "model_not_found", decode[openai.Envelope](t, body).Error.Code)
}

func TestTokenizeErrors(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ZeroLatency = true })
	for _, tc := range []struct {
		body  string
		code  string
		param string
	}{
		{`{"prompt":`, "invalid_json", ""},
		{`["prompt"]`, "invalid_json", ""},
		{`{"prompt":"x","prompt":"y"}`, "duplicate_key", "prompt"},
		{`{"model":"sim-model"}`, "missing_prompt", ""},
		{`{"prompt":null,"messages":null}`, "missing_prompt", ""},
		{`{"prompt":"x","messages":[{"role":"user","content":"x"}]}`, "invalid_request", ""},
		{`{"prompt":5}`, "invalid_prompt", ""},
		{`{"prompt":[1.5]}`, "invalid_prompt", ""},
		{`{"messages":"hi"}`, "invalid_messages", ""},
		{`{"messages":[{"content":"x"}]}`, "invalid_messages", ""},
		{`{"messages":[],"add_generation_prompt":"yes"}`, "invalid_add_generation_prompt", "add_generation_prompt"},
		{`{"messages":[],"add_generation_prompt":null}`, "invalid_add_generation_prompt", "add_generation_prompt"},
		{`{"prompt":"x","add_special_tokens":1}`, "invalid_add_special_tokens", "add_special_tokens"},
		{`{"prompt":"x","return_token_strs":"no"}`, "invalid_return_token_strs", "return_token_strs"},
		{`{"model":5,"prompt":"x"}`, "invalid_model", ""},
	} {
		code, body := ts.post(t, "/tokenize", tc.body)
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", tc.body, body)
		e := decode[openai.Envelope](t, body).Error
		assert.Equal(t, tc.code, e.Code, tc.body)
		assert.Equal(t, openai.TypeInvalidRequest, e.Type, tc.body)
		if tc.param != "" {
			require.NotNil(t, e.Param, tc.body)
			assert.Equal(t, tc.param, *e.Param, tc.body)
		}
	}
	// A completions prompt's add_generation_prompt means nothing and is not
	// checked, as vLLM's TokenizeCompletionRequest ignores unknown fields.
	ts.tokenize(t, `{"prompt":"x","add_generation_prompt":"yes"}`)

	code, body := ts.post(t, "/tokenize", `{"prompt":"`+strings.Repeat("x", maxBodyBytes)+`"}`)
	assert.Equal(t, http.StatusRequestEntityTooLarge, code)
	assert.Equal(t, "request_too_large", decode[openai.Envelope](t, body).Error.Code)

	// The generation endpoints check add_generation_prompt the same way.
	code, body = ts.post(t, chatPath, chatBody("s", "u", `"add_generation_prompt":1`))
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Equal(t, "invalid_add_generation_prompt", decode[openai.Envelope](t, body).Error.Code)
}

func TestTokenizeWhileLoading(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.StartupDelay = time.Hour })
	code, _ := ts.post(t, "/tokenize", `{"prompt":"x"}`)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	code, _ = ts.post(t, "/reset_prefix_cache", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
}
