package sim

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

func TestChatNonStreamingShape(t *testing.T) {
	ts := startServer(t, nil)
	status, body := ts.post(t, "/v1/chat/completions", chatBody("be brief", "hello", `"max_tokens":7`))
	require.Equal(t, http.StatusOK, status, "%s", body)
	c := decode[completion](t, body)
	assert.True(t, strings.HasPrefix(c.ID, "chatcmpl-"), c.ID)
	assert.Equal(t, "chat.completion", c.Object)
	assert.Equal(t, "sim-model", c.Model)
	assert.InDelta(t, time.Now().Unix(), c.Created, 5)
	require.Len(t, c.Choices, 1)
	ch := c.Choices[0]
	require.NotNil(t, ch.Message)
	assert.Equal(t, "assistant", ch.Message.Role)
	assert.Len(t, strings.Fields(ch.Message.Content), 7, "one word a token")
	assert.Equal(t, "length", *ch.FinishReason)
	require.NotNil(t, c.Usage)
	wantPrompt := (len("<|system|>\nbe brief\n<|user|>\nhello\n<|assistant|>\n") + 3) / 4
	assert.Equal(t, wantPrompt, c.Usage.PromptTokens)
	assert.Equal(t, 7, c.Usage.CompletionTokens)
	assert.Equal(t, wantPrompt+7, c.Usage.TotalTokens)

	var raw map[string]any
	require.NoError(t, json.Unmarshal(body, &raw))
	choice := raw["choices"].([]any)[0].(map[string]any)
	assert.Contains(t, choice, "logprobs")
	assert.Nil(t, choice["logprobs"])
}

func TestMaxTokensExactnessAndDefaults(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxModelLen = 100; c.DefaultMaxTokens = 5 })
	prompt40 := strings.Repeat("abcd", 40)

	for _, tc := range []struct {
		name, extra string
		tokens      int
		reason      string
	}{
		{"max_tokens", `"max_tokens":13`, 13, "length"},
		{"max_completion_tokens wins", `"max_completion_tokens":3,"max_tokens":13`, 3, "length"},
		{"default", ``, 5, "stop"},
		{"null means default", `"max_tokens":null`, 5, "stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := ts.post(t, "/v1/chat/completions", chatBody("s", "u", tc.extra))
			require.Equal(t, http.StatusOK, status, "%s", body)
			c := decode[completion](t, body)
			assert.Equal(t, tc.tokens, c.Usage.CompletionTokens)
			assert.Len(t, strings.Fields(c.Choices[0].Message.Content), tc.tokens)
			assert.Equal(t, tc.reason, *c.Choices[0].FinishReason)
		})
	}

	t.Run("up to max-model-len", func(t *testing.T) {
		status, body := ts.post(t, "/v1/completions", `{"model":"sim-model","prompt":"`+prompt40+`","max_tokens":60}`)
		require.Equal(t, http.StatusOK, status, "%s", body)
		c := decode[completion](t, body)
		assert.Equal(t, 40, c.Usage.PromptTokens)
		assert.Equal(t, 60, c.Usage.CompletionTokens)
		assert.Equal(t, "length", *c.Choices[0].FinishReason)
	})

	// vLLM answers 400 when prompt + max_tokens exceed the context; it does
	// not cap.
	for _, tc := range []struct{ name, path, body, param string }{
		{"max_tokens beyond max-model-len", "/v1/completions", `{"prompt":"` + prompt40 + `","max_tokens":61}`, "max_tokens"},
		{"far beyond", "/v1/completions", `{"prompt":"` + prompt40 + `","max_tokens":1000000000000}`, "max_tokens"},
		{"max_completion_tokens beyond", "/v1/chat/completions", chatBody("s", strings.Repeat("x", 200), `"max_completion_tokens":90`), "max_completion_tokens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := ts.post(t, tc.path, tc.body)
			require.Equal(t, http.StatusBadRequest, status, "%s", body)
			e := decode[openai.Envelope](t, body).Error
			assert.Equal(t, "context_length_exceeded", e.Code)
			assert.Equal(t, openai.TypeInvalidRequest, e.Type)
			require.NotNil(t, e.Param)
			assert.Equal(t, tc.param, *e.Param)
			assert.Contains(t, e.Message, "This model's maximum context length is 100 tokens")
		})
	}
	assert.Equal(t, 3.0, ts.value(t, "vllm:request_success_total", "finished_reason", "length"), "the refused requests did not run")

	t.Run("default capped by max-model-len", func(t *testing.T) {
		// Without max_tokens the output fits in what the context leaves.
		status, body := ts.post(t, "/v1/completions", `{"prompt":"`+strings.Repeat("abcd", 97)+`"}`)
		require.Equal(t, http.StatusOK, status, "%s", body)
		c := decode[completion](t, body)
		assert.Equal(t, 97, c.Usage.PromptTokens)
		assert.Equal(t, 3, c.Usage.CompletionTokens)
		assert.Equal(t, "length", *c.Choices[0].FinishReason)
	})
}

func TestCompletionsShapeAndPromptForms(t *testing.T) {
	ts := startServer(t, nil)
	status, body := ts.post(t, "/v1/completions", `{"model":"sim-model","prompt":"abcdefgh","max_tokens":4}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	c := decode[completion](t, body)
	assert.True(t, strings.HasPrefix(c.ID, "cmpl-"), c.ID)
	assert.Equal(t, "text_completion", c.Object)
	require.NotNil(t, c.Choices[0].Text)
	assert.Len(t, strings.Fields(*c.Choices[0].Text), 4)
	assert.Equal(t, 2, c.Usage.PromptTokens)

	// An array of strings is one prompt; token ids count one token each.
	_, body = ts.post(t, "/v1/completions", `{"prompt":["abcd","efgh","ij"],"max_tokens":1}`)
	assert.Equal(t, 3, decode[completion](t, body).Usage.PromptTokens)
	_, body = ts.post(t, "/v1/completions", `{"prompt":[1,2,3,4,5],"max_tokens":1}`)
	assert.Equal(t, 5, decode[completion](t, body).Usage.PromptTokens)

	// The X-Request-Id header names the response.
	req, _ := http.NewRequest(http.MethodPost, ts.URL+"/v1/completions", strings.NewReader(`{"prompt":"x","max_tokens":1}`))
	req.Header.Set("X-Request-Id", "abc123")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "cmpl-abc123", decode[completion](t, b).ID)
}

func TestChatStreamShape(t *testing.T) {
	ts := startServer(t, nil)
	for _, includeUsage := range []bool{false, true} {
		name := "without usage"
		if includeUsage {
			name = "with usage"
		}
		t.Run(name, func(t *testing.T) {
			opts := `"stream":true,"max_tokens":5`
			if includeUsage {
				opts += `,"stream_options":{"include_usage":true}`
			}
			events, _, err := ts.stream(t, context.Background(), "/v1/chat/completions", chatBody("sys", "hi", opts))
			require.NoError(t, err)
			// role, 5 tokens, final, [usage], [DONE]
			want := 1 + 5 + 1 + 1
			if includeUsage {
				want++
			}
			require.Len(t, events, want)
			assert.Equal(t, "[DONE]", string(events[len(events)-1].data))

			var id string
			var content strings.Builder
			for i, ev := range events[:len(events)-1] {
				c := decode[completion](t, ev.data)
				var raw map[string]json.RawMessage
				require.NoError(t, json.Unmarshal(ev.data, &raw))
				if id == "" {
					id = c.ID
				}
				assert.Equal(t, id, c.ID, "one id for the whole stream")
				assert.True(t, strings.HasPrefix(c.ID, "chatcmpl-"))
				assert.Equal(t, "chat.completion.chunk", c.Object)
				isUsageChunk := includeUsage && i == len(events)-2
				switch {
				case isUsageChunk:
					assert.Empty(t, c.Choices)
					assert.Equal(t, "[]", string(raw["choices"]))
					require.NotNil(t, c.Usage)
					assert.Equal(t, 5, c.Usage.CompletionTokens)
					assert.Equal(t, c.Usage.PromptTokens+5, c.Usage.TotalTokens)
				case includeUsage:
					assert.Equal(t, "null", string(raw["usage"]))
				default:
					assert.NotContains(t, raw, "usage")
				}
				if isUsageChunk {
					continue
				}
				require.Len(t, c.Choices, 1)
				ch := c.Choices[0]
				require.NotNil(t, ch.Delta)
				switch {
				case i == 0:
					require.NotNil(t, ch.Delta.Role)
					assert.Equal(t, "assistant", *ch.Delta.Role)
					assert.Nil(t, ch.FinishReason)
				case ch.FinishReason != nil:
					assert.Equal(t, "length", *ch.FinishReason)
					assert.Equal(t, 6, i, "the finish chunk follows the 5 tokens")
				default:
					require.NotNil(t, ch.Delta.Content)
					content.WriteString(*ch.Delta.Content)
				}
			}
			assert.Len(t, strings.Fields(content.String()), 5)
		})
	}
}

func TestCompletionsStreamShape(t *testing.T) {
	ts := startServer(t, nil)
	events, _, err := ts.stream(t, context.Background(), "/v1/completions",
		`{"prompt":"hello","stream":true,"max_tokens":3,"stream_options":{"include_usage":true}}`)
	require.NoError(t, err)
	require.Len(t, events, 3+1+1+1)
	for _, ev := range events[:3] {
		c := decode[completion](t, ev.data)
		assert.Equal(t, "text_completion", c.Object)
		assert.True(t, strings.HasPrefix(c.ID, "cmpl-"))
		require.NotNil(t, c.Choices[0].Text)
		assert.NotEmpty(t, *c.Choices[0].Text)
	}
	final := decode[completion](t, events[3].data)
	assert.Equal(t, "length", *final.Choices[0].FinishReason)
	u := decode[completion](t, events[4].data)
	assert.Empty(t, u.Choices)
	assert.Equal(t, 3, u.Usage.CompletionTokens)
	assert.Equal(t, "[DONE]", string(events[5].data))
}

func TestErrors(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxModelLen = 64 })
	for _, tc := range []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"malformed JSON", "/v1/chat/completions", `{"model":`, 400, "invalid_json"},
		{"not an object", "/v1/chat/completions", `[1]`, 400, "invalid_json"},
		{"unknown model", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, 404, "model_not_found"},
		{"unknown model completions", "/v1/completions", `{"model":"nope","prompt":"x"}`, 404, "model_not_found"},
		{"missing messages", "/v1/chat/completions", `{"model":"sim-model"}`, 400, "missing_messages"},
		{"empty messages", "/v1/chat/completions", `{"messages":[]}`, 400, "invalid_messages"},
		{"bad messages", "/v1/chat/completions", `{"messages":"hi"}`, 400, "invalid_messages"},
		{"missing prompt", "/v1/completions", `{"model":"sim-model"}`, 400, "missing_prompt"},
		{"empty prompt", "/v1/completions", `{"prompt":""}`, 400, "invalid_prompt"},
		{"prompt too long", "/v1/completions", `{"prompt":"` + strings.Repeat("abcd", 64) + `"}`, 400, "context_length_exceeded"},
		{"chat too long", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + strings.Repeat("abcd", 70) + `"}]}`, 400, "context_length_exceeded"},
		{"max_tokens zero", "/v1/completions", `{"prompt":"x","max_tokens":0}`, 400, "invalid_max_tokens"},
		{"max_tokens not int", "/v1/completions", `{"prompt":"x","max_tokens":"3"}`, 400, "invalid_max_tokens"},
		{"n > 1", "/v1/completions", `{"prompt":"x","n":2}`, 400, "invalid_n"},
		{"embeddings without input", "/v1/embeddings", `{}`, 400, "missing_input"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := ts.post(t, tc.path, tc.body)
			assert.Equal(t, tc.status, status, "%s", body)
			e := decode[openai.Envelope](t, body)
			assert.Equal(t, tc.code, e.Error.Code)
			assert.NotEmpty(t, e.Error.Message)
			assert.NotEmpty(t, e.Error.Type)
		})
	}
	// Wrong method.
	resp, err := http.Get(ts.URL + "/v1/chat/completions")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

func TestFailRateInjects500(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.FailRate = 1 })
	status, body := ts.post(t, "/v1/chat/completions", chatBody("s", "u", ""))
	assert.Equal(t, http.StatusInternalServerError, status)
	e := decode[openai.Envelope](t, body)
	assert.Equal(t, openai.TypeServer, e.Error.Type)

	// A fraction with a fixed seed is reproducible.
	count := func() int {
		ts := startServer(t, func(c *Config) { c.FailRate = 0.5; c.Seed = 42; c.ZeroLatency = true })
		failed := 0
		for range 40 {
			if status, _ := ts.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1}`); status == 500 {
				failed++
			}
		}
		return failed
	}
	first := count()
	assert.Equal(t, first, count())
	assert.InDelta(t, 20, first, 12)
}

func TestStartupDelay(t *testing.T) {
	start := time.Now()
	ts := startServer(t, func(c *Config) { c.StartupDelay = 2 * time.Second; c.TimeScale = 10 }) // 200ms real
	resp, err := http.Get(ts.URL + "/health")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))

	status, body := ts.post(t, "/v1/chat/completions", chatBody("s", "u", ""))
	assert.Equal(t, http.StatusServiceUnavailable, status)
	assert.Equal(t, openai.TypeUnavailable, decode[openai.Envelope](t, body).Error.Type)
	resp, err = http.Get(ts.URL + "/v1/models")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)

	require.Eventually(t, func() bool {
		resp, err := http.Get(ts.URL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 5*time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond, "startup delay is divided by the time scale")
	status, _ = ts.post(t, "/v1/chat/completions", chatBody("s", "u", ""))
	assert.Equal(t, http.StatusOK, status)
}

func TestModelsAndEmbeddings(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Model = "llama"; c.MaxModelLen = 4096 })
	resp, err := http.Get(ts.URL + "/v1/models")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.JSONEq(t, `{"object":"list","data":[{"id":"llama","object":"model","created":`+
		jsonNumber(ts.created)+`,"owned_by":"kvasir-sim","root":"llama","parent":null,"max_model_len":4096}]}`, string(b))

	status, body := ts.post(t, "/v1/embeddings", `{"model":"llama","input":["hello world","hi"]}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	var e struct {
		Object string `json:"object"`
		Model  string `json:"model"`
		Data   []struct {
			Object    string    `json:"object"`
			Index     int       `json:"index"`
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			TotalTokens  int `json:"total_tokens"`
		} `json:"usage"`
	}
	require.NoError(t, json.Unmarshal(body, &e))
	assert.Equal(t, "list", e.Object)
	assert.Equal(t, "llama", e.Model)
	require.Len(t, e.Data, 2)
	assert.Equal(t, 1, e.Data[1].Index)
	assert.Len(t, e.Data[0].Embedding, 8)
	assert.NotEqual(t, e.Data[0].Embedding, e.Data[1].Embedding)
	assert.Equal(t, 3+1, e.Usage.PromptTokens)
	assert.Equal(t, e.Usage.PromptTokens, e.Usage.TotalTokens)

	// Deterministic, and base64 carries the same float32 values.
	_, again := ts.post(t, "/v1/embeddings", `{"input":"hello world","encoding_format":"base64"}`)
	var b64 struct {
		Data []struct {
			Embedding string `json:"embedding"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(again, &b64))
	raw, err := base64.StdEncoding.DecodeString(b64.Data[0].Embedding)
	require.NoError(t, err)
	require.Len(t, raw, 32)
	vec := embed([]byte("hello world"))
	for i, v := range vec {
		assert.InDelta(t, e.Data[0].Embedding[i], float64(v), 1e-6)
	}
}

func jsonNumber(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestMetricsNamesExposed(t *testing.T) {
	ts := startServer(t, nil)
	status, _ := ts.post(t, "/v1/chat/completions", chatBody("s", "u", `"max_tokens":3`))
	require.Equal(t, http.StatusOK, status)
	resp, err := http.Get(ts.URL + "/metrics")
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(b)
	for _, name := range []string{
		`vllm:num_requests_running{model_name="sim-model"}`,
		`vllm:num_requests_waiting{model_name="sim-model"}`,
		`vllm:kv_cache_usage_perc{model_name="sim-model"}`,
		`vllm:gpu_cache_usage_perc{model_name="sim-model"}`,
		`vllm:cache_config_info{block_size="16",model_name="sim-model",num_gpu_blocks="31250"} 1`,
		`vllm:prefix_cache_hits_total{model_name="sim-model"}`,
		`vllm:prefix_cache_queries_total{model_name="sim-model"}`,
		`vllm:prompt_tokens_total{model_name="sim-model"}`,
		`vllm:generation_tokens_total{model_name="sim-model"} 3`,
		`vllm:request_success_total{finished_reason="length",model_name="sim-model"} 1`,
		`vllm:time_to_first_token_seconds_bucket{model_name="sim-model",le="0.001"}`,
		`vllm:inter_token_latency_seconds_count{model_name="sim-model"} 2`,
		`vllm:e2e_request_latency_seconds_count{model_name="sim-model"} 1`,
		`vllm:request_queue_time_seconds_count{model_name="sim-model"} 1`,
	} {
		assert.Contains(t, text, name)
	}
	assert.NotContains(t, text, "vllm:lora_requests_info", "only with LoRA enabled")
	assert.NotContains(t, text, "go_goroutines", "a registry of its own, not the global one")
}

func TestLoRAAdapters(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.LoRAModules = []LoRAModule{{Name: "sql", Path: "/adapters/sql"}}
		c.MaxLoRAs = 2
	})
	status, body := ts.post(t, "/v1/load_lora_adapter", `{"lora_name":"chat","lora_path":"/adapters/chat"}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Contains(t, string(body), "Success")
	status, _ = ts.post(t, "/v1/load_lora_adapter", `{"lora_name":"chat","lora_path":"/adapters/chat"}`)
	assert.Equal(t, http.StatusBadRequest, status, "already loaded")

	resp, err := http.Get(ts.URL + "/v1/models")
	require.NoError(t, err)
	var models struct {
		Data []struct {
			ID     string  `json:"id"`
			Root   string  `json:"root"`
			Parent *string `json:"parent"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&models))
	resp.Body.Close()
	require.Len(t, models.Data, 3)
	assert.Equal(t, "sim-model", models.Data[0].ID)
	assert.Nil(t, models.Data[0].Parent)
	assert.Equal(t, "chat", models.Data[1].ID)
	assert.Equal(t, "/adapters/chat", models.Data[1].Root)
	assert.Equal(t, "sim-model", *models.Data[1].Parent)
	assert.Equal(t, "sql", models.Data[2].ID)

	status, body = ts.post(t, "/v1/completions", `{"model":"sql","prompt":"select","max_tokens":2}`)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.Equal(t, "sql", decode[completion](t, body).Model)

	// While a stream runs under an adapter, the info metric names it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _, _ = ts.tryStream(ctx, "/v1/completions", `{"model":"chat","prompt":"hi","max_tokens":30000,"stream":true}`)
	}()
	require.Eventually(t, func() bool {
		for _, m := range ts.family(t, "vllm:lora_requests_info").GetMetric() {
			if hasLabel(m, "running_lora_adapters", "chat") && hasLabel(m, "max_lora", "2") {
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond)
	cancel()

	status, _ = ts.post(t, "/v1/unload_lora_adapter", `{"lora_name":"chat"}`)
	assert.Equal(t, http.StatusOK, status)
	status, _ = ts.post(t, "/v1/unload_lora_adapter", `{"lora_name":"chat"}`)
	assert.Equal(t, http.StatusNotFound, status)
	status, body = ts.post(t, "/v1/completions", `{"model":"chat","prompt":"x"}`)
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, "model_not_found", decode[openai.Envelope](t, body).Error.Code)
}

func TestLoRADisabled(t *testing.T) {
	ts := startServer(t, nil)
	status, _ := ts.post(t, "/v1/load_lora_adapter", `{"lora_name":"a","lora_path":"/a"}`)
	assert.Equal(t, http.StatusBadRequest, status)
}
