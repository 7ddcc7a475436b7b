package queueproxy

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

var usageSeeds = []string{
	completionBody,
	`{"usage":{"prompt_tokens":1,"completion_tokens":2}}`,
	`{"usage":null}`, `{"usage":{}}`, `{"usage":[]}`, `{"usage":"x"}`, `{}`, `[]`, `null`, `not json`, ``,
	`{"usage":{"prompt_tokens":1.5}}`, `{"usage":{"prompt_tokens":-1}}`, `{"usage":{"prompt_tokens":1e3}}`,
	`{"usage":{"prompt_tokens":18446744073709551616}}`, `{"usage":{"prompt_tokens":"7"}}`,
	`{"usage":{"Prompt_Tokens":7}}`, `{"usage":{"prompt_tokens":7,"prompt_tokens":8}}`,
	`{"usage":{"prompt_tokens_details":null,"prompt_tokens":3}}`,
	`{"usage":{"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens_details":{}}}`,
	`{"usage":{"prompt_tokens_details":{"cached_tokens":null}}}`,
	`{"usage":{"prompt_tokens_details":{"CACHED_TOKENS":2}}}`,
	`{"usage":{"prompt_tokens_details":5}}`,
	`{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}`,
	`{"us\u0061ge":{"prompt_tokens":1}}`, `{"x":"}\"{","usage":{"prompt_tokens":9,"extra":[1,{"a":"]"}]}}`,
	` { "usage" : { "completion_tokens" : 4 } } `,
}

// usageOf reads what openai.UsageOf reads, on the bodies it accepts.
func FuzzUsageOf(f *testing.F) {
	for _, s := range usageSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if !json.Valid([]byte(body)) {
			return // the engine's answer is not judged: usageOf may find usage in a broken one
		}
		if _, err := openai.Parse([]byte(body)); errors.Is(err, openai.ErrDuplicateKey) {
			return // openai.Parse refuses repeated keys; usageOf looks only for a repeated "usage"
		}
		want := openai.UsageOf([]byte(body))
		var ub usageBuf
		got := usageOf([]byte(body), &ub)
		require.Equal(t, want, got, "%s", body)
	})
}

var chunkSeeds = []string{
	chunkRole, chunkHel, chunkLo, chunkStop, chunkUsage,
	`{"choices":[{"text":"a"}]}`, `{"choices":[{"text":""}]}`, `{"choices":[{"text":null}]}`,
	`{"choices":[{"delta":{"reasoning_content":"r"}}]}`, `{"choices":[{"delta":{"reasoning":"r"}}]}`,
	`{"choices":[{"delta":{"tool_calls":[{"id":"1"}]}}]}`, `{"choices":[{"delta":{"tool_calls":[]}}]}`,
	`{"choices":[{"delta":{"tool_calls":null}}]}`, `{"choices":[{"delta":null}]}`,
	`{"choices":[{"delta":{"content":5}}]}`, `{"choices":[5]}`, `{"choices":[null]}`, `{"choices":{}}`,
	`{"choices":null,"usage":{"prompt_tokens":1}}`, `{"choices":[],"usage":null}`, `{"usage":{"prompt_tokens":1}}`,
	`{"error":{"message":"boom"}}`, `{"error":null}`, `{"Error":"x"}`, `{"CHOICES":[]}`, `[1]`, `"s"`, `{}`,
	`{"choices":[{"delta":{"content":"\n"}}],"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":1}}}`,
	`{"choices":[{"index":0,"delta":{"content":"x","role":"assistant"},"logprobs":{"content":[{"t":"]"}]}}]}`,
}

// fastChunk reads what encoding/json reads of a chunk, whenever it
// claims to.
func FuzzChunkFacts(f *testing.F) {
	for _, s := range chunkSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		if !json.Valid([]byte(data)) {
			return // the meter passes such events on unread
		}
		var ub, tmp usageBuf
		got, ok := fastChunk([]byte(data), &ub, &tmp)
		if !ok {
			return
		}
		want := slowChunk([]byte(data))
		require.Equal(t, want, got, "%s", data)
	})
}
