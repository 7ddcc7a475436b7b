package openaitest

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"github.com/stretchr/testify/require"
)

// Message is one message of a chat request.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// System returns a system message.
func System(content string) Message { return Message{Role: "system", Content: content} }

// User returns a user message.
func User(content string) Message { return Message{Role: "user", Content: content} }

// ChatBody returns the JSON body of a chat completion request for model
// (no "model" member when empty) with messages, then extra: further
// top-level members as raw JSON, such as `"max_tokens":4,"stream":true`
// (none when empty).
func ChatBody(model, extra string, messages ...Message) string {
	var b strings.Builder
	b.WriteByte('{')
	if model != "" {
		m, _ := json.Marshal(model) // a string always marshals
		b.WriteString(`"model":`)
		b.Write(m)
		b.WriteByte(',')
	}
	msgs, _ := json.Marshal(messages) // strings always marshal
	b.WriteString(`"messages":`)
	b.Write(msgs)
	if extra != "" {
		b.WriteByte(',')
		b.WriteString(extra)
	}
	b.WriteByte('}')
	return b.String()
}

// Accumulate reads a streamed chat completion to its end and returns what
// its chunks add up to and how many there were. A stream that fails fails
// the test.
func Accumulate(t testing.TB, stream *ssestream.Stream[openai.ChatCompletionChunk]) (*openai.ChatCompletionAccumulator, int) {
	t.Helper()
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	require.NoError(t, stream.Err())
	return &acc, chunks
}
