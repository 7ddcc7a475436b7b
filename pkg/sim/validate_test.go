package sim

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

const (
	chatPath = "/v1/chat/completions"
	cmplPath = "/v1/completions"
)

// requestWith is a small request of the API at path with extra members,
// and "max_tokens": 2 unless they set an output limit.
func requestWith(path, extra string) string {
	if !strings.Contains(extra, `"max_`) {
		extra = `"max_tokens":2,` + extra
	}
	if path == chatPath {
		return chatBody("s", "u", extra)
	}
	return `{"prompt":"hello",` + extra + `}`
}

func TestSamplingParamsRejectedAsVLLMDoes(t *testing.T) {
	ts := startServer(t, nil)
	for _, tc := range []struct {
		name, path, extra string
		param, code       string
	}{
		// Wrong JSON types name the field.
		{"temperature not a number", chatPath, `"temperature":"abc"`, "temperature", "invalid_temperature"},
		{"numeric string", cmplPath, `"temperature":"0.5"`, "temperature", "invalid_temperature"},
		{"temperature boolean", chatPath, `"temperature":true`, "temperature", "invalid_temperature"},
		{"top_p string", chatPath, `"top_p":"1"`, "top_p", "invalid_top_p"},
		{"top_k fractional", chatPath, `"top_k":1.5`, "top_k", "invalid_top_k"},
		{"n string", cmplPath, `"n":"1"`, "n", "invalid_n"},
		{"presence_penalty array", chatPath, `"presence_penalty":[0]`, "presence_penalty", "invalid_presence_penalty"},
		{"frequency_penalty object", cmplPath, `"frequency_penalty":{}`, "frequency_penalty", "invalid_frequency_penalty"},
		{"seed string", chatPath, `"seed":"7"`, "seed", "invalid_seed"},
		{"stop number", chatPath, `"stop":5`, "stop", "invalid_stop"},
		{"stop array of numbers", cmplPath, `"stop":[1,2]`, "stop", "invalid_stop"},
		{"stop_token_ids strings", chatPath, `"stop_token_ids":["a"]`, "stop_token_ids", "invalid_stop_token_ids"},
		{"stream string", chatPath, `"stream":"true"`, "stream", "invalid_stream"},
		{"stream_options array", chatPath, `"stream":true,"stream_options":[]`, "stream_options", "invalid_stream_options"},
		{"include_usage string", cmplPath, `"stream":true,"stream_options":{"include_usage":"yes"}`, "stream_options.include_usage", "invalid_stream_options"},
		{"chat logprobs integer", chatPath, `"logprobs":3`, "logprobs", "invalid_logprobs"},
		{"completions logprobs boolean", cmplPath, `"logprobs":true`, "logprobs", "invalid_logprobs"},
		{"top_logprobs string", chatPath, `"logprobs":true,"top_logprobs":"2"`, "top_logprobs", "invalid_top_logprobs"},
		{"max_tokens string", cmplPath, `"max_tokens":"3"`, "max_tokens", "invalid_max_tokens"},
		{"max_tokens fractional", chatPath, `"max_tokens":2.5`, "max_tokens", "invalid_max_tokens"},
		{"max_completion_tokens boolean", chatPath, `"max_completion_tokens":false`, "max_completion_tokens", "invalid_max_tokens"},
		{"min_tokens null", chatPath, `"min_tokens":null`, "min_tokens", "invalid_min_tokens"},
		{"ignore_eos string", cmplPath, `"ignore_eos":"yes"`, "ignore_eos", "invalid_ignore_eos"},
		{"user number", chatPath, `"user":5`, "user", "invalid_user"},
		{"logit_bias array", chatPath, `"logit_bias":[1]`, "logit_bias", "invalid_logit_bias"},

		// Out of vLLM's ranges (SamplingParams._verify_args).
		{"temperature negative", chatPath, `"temperature":-0.1`, "temperature", "invalid_temperature"},
		{"temperature above 2", cmplPath, `"temperature":2.5`, "temperature", "invalid_temperature"},
		{"temperature infinite", chatPath, `"temperature":1e400`, "temperature", "invalid_temperature"},
		{"top_p zero", chatPath, `"top_p":0`, "top_p", "invalid_top_p"},
		{"top_p above 1", cmplPath, `"top_p":1.01`, "top_p", "invalid_top_p"},
		{"top_k below -1", chatPath, `"top_k":-2`, "top_k", "invalid_top_k"},
		{"min_p above 1", chatPath, `"min_p":1.5`, "min_p", "invalid_min_p"},
		{"n zero", cmplPath, `"n":0`, "n", "invalid_n"},
		{"n above 1 (not simulated)", chatPath, `"n":2`, "n", "invalid_n"},
		{"presence_penalty above 2", chatPath, `"presence_penalty":2.1`, "presence_penalty", "invalid_presence_penalty"},
		{"frequency_penalty below -2", cmplPath, `"frequency_penalty":-3`, "frequency_penalty", "invalid_frequency_penalty"},
		{"repetition_penalty zero", chatPath, `"repetition_penalty":0`, "repetition_penalty", "invalid_repetition_penalty"},
		{"seed beyond int64", chatPath, `"seed":9223372036854775808`, "seed", "invalid_seed"},
		{"empty stop string", chatPath, `"stop":""`, "stop", "invalid_stop"},
		{"empty stop in array", cmplPath, `"stop":["a",""]`, "stop", "invalid_stop"},
		{"max_tokens zero", cmplPath, `"max_tokens":0`, "max_tokens", "invalid_max_tokens"},
		{"max_completion_tokens negative", chatPath, `"max_completion_tokens":-1`, "max_completion_tokens", "invalid_max_tokens"},
		{"min_tokens negative", chatPath, `"min_tokens":-1`, "min_tokens", "invalid_min_tokens"},
		{"min_tokens above max_tokens", cmplPath, `"min_tokens":3`, "min_tokens", "invalid_min_tokens"},
		{"completions logprobs negative", cmplPath, `"logprobs":-2`, "logprobs", "invalid_logprobs"},

		// Cross-field rules of vLLM's request models.
		{"stream_options without stream", chatPath, `"stream_options":{"include_usage":true}`, "stream_options", "invalid_stream_options"},
		{"top_logprobs without logprobs", chatPath, `"top_logprobs":2`, "top_logprobs", "invalid_top_logprobs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := requestWith(tc.path, tc.extra)
			status, got := ts.post(t, tc.path, body)
			require.Equal(t, http.StatusBadRequest, status, "%s: %s", body, got)
			e := decode[openai.Envelope](t, got).Error
			assert.Equal(t, openai.TypeInvalidRequest, e.Type)
			assert.Equal(t, tc.code, e.Code)
			require.NotNil(t, e.Param, "%s", got)
			assert.Equal(t, tc.param, *e.Param)
			assert.NotEmpty(t, e.Message)
		})
	}
	assert.Zero(t, ts.value(t, "vllm:request_success_total", "finished_reason", "length"), "no refused request reached the engine")
}

func TestSamplingParamsAcceptedAsVLLMDoes(t *testing.T) {
	ts := startServer(t, nil)
	for _, tc := range []struct{ name, path, extra string }{
		{"bounds", chatPath, `"temperature":0,"top_p":1,"top_k":-1,"min_p":0,"presence_penalty":-2,"frequency_penalty":2,"repetition_penalty":1.2`},
		{"upper temperature", cmplPath, `"temperature":2,"top_k":0,"top_p":0.01`},
		{"nulls mean absent", chatPath, `"temperature":null,"top_p":null,"top_k":null,"n":null,"seed":null,"stop":null,"stream":null,"stream_options":null,"logprobs":null,"user":null`},
		{"seed", cmplPath, `"seed":-1`},
		{"integral float is an integer", chatPath, `"n":1.0,"top_k":5.0,"seed":1e3`},
		{"stop forms", chatPath, `"stop":"x","stop_token_ids":[1,2]`},
		{"stop array", cmplPath, `"stop":["a","b"],"ignore_eos":true,"min_tokens":2,"user":"me"`},
		{"chat logprobs", chatPath, `"logprobs":true,"top_logprobs":3,"echo":false,"logit_bias":{"7":1.5}`},
		{"completions logprobs", cmplPath, `"logprobs":3,"echo":null`},
		{"empty stream_options without stream", chatPath, `"stream_options":{}`},
		{"unknown fields are ignored", chatPath, `"tools":null,"response_format":{"type":"text"},"whatever":[1]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, got := ts.post(t, tc.path, requestWith(tc.path, tc.extra))
			require.Equal(t, http.StatusOK, status, "%s", got)
			assert.Equal(t, 2, decode[completion](t, got).Usage.CompletionTokens)
		})
	}
}
