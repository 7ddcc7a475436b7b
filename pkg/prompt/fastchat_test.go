package prompt

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// sameAsSlow checks AppendChatJSON against DecodeMessages + AppendChat.
func sameAsSlow(t *testing.T, raw []byte) {
	t.Helper()
	if !json.Valid(raw) {
		return // callers validate first (openai.Parse)
	}
	prefix := []byte("prefix:")
	got, gotErr := AppendChatJSON(append([]byte(nil), prefix...), raw)
	msgs, wantErr := DecodeMessages(raw)
	if wantErr != nil {
		require.Error(t, gotErr, "%q", raw)
		require.Equal(t, string(prefix), string(got), "on error dst is unchanged")
		return
	}
	require.NoError(t, gotErr, "%q", raw)
	require.Equal(t, string(prefix)+RenderChat(msgs), string(got), "%q", raw)
}

func TestAppendChatJSONMatchesDecode(t *testing.T) {
	cases := []string{
		`[]`, `[{"role":"user","content":"hi"}]`,
		`[{"role":"system","content":"be \"brief\"\n\ttabs \\ \/ \u00e9 \ud83d\ude00 \ud800 lone \udc00"},{"role":"user","content":null}]`,
		`[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}]`,
		`[{"role":"user","content":[]}]`, `[{"role":"assistant","tool_calls":[{"id":"1"}]}]`,
		`[{"Role":"user","content":"case folded key"}]`, `[{"role":"user","CONTENT":"x"}]`,
		`[{"role":"user","content":"a","content":"dup"}]`, `[{"role":"","content":"x"}]`, `[{"content":"x"}]`,
		`[{"role":1,"content":"x"}]`, `[{"role":"user","content":5}]`, `[1]`, `{"role":"user"}`, `null`, `"s"`,
		"[{\"role\":\"user\",\"content\":\"bad utf8 \xff here\"}]", `[{"role":"user","content":[{"type":"text","text":5}]}]`,
		`[{"role":"user","content":[1]}]`, `[{"r\u006fle":"user","content":"escaped key"}]`,
		`[{"role":"user","content":[{"type":"t\u0065xt","text":"escaped type"}]}]`,
		` [ { "role" : "user" , "content" : "spaces" } , {"role":"assistant","content":"ok","name":"n"} ] `,
		`[{"role":"user","content":"` + strings.Repeat("long ", 5000) + `"}]`,
	}
	for _, c := range cases {
		sameAsSlow(t, []byte(c))
	}
}

func FuzzAppendChatJSON(f *testing.F) {
	for _, s := range []string{`[{"role":"user","content":"hi"}]`, `[{"role":"a","content":[{"type":"text","text":"\u00e9"}]}]`,
		`[{"role":"u","content":null},{"role":"v","content":"\ud83d\ude00"}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) { sameAsSlow(t, raw) })
}

func BenchmarkAppendChatJSON8k(b *testing.B) {
	raw := []byte(`[{"role":"system","content":"` + strings.Repeat("You are a helpful assistant.\\n", 1100) +
		`"},{"role":"user","content":"What is the capital of France?"}]`)
	var dst []byte
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = AppendChatJSON(dst[:0], raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeMessages8k(b *testing.B) {
	raw := []byte(`[{"role":"system","content":"` + strings.Repeat("You are a helpful assistant.\\n", 1100) +
		`"},{"role":"user","content":"What is the capital of France?"}]`)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		msgs, _ := DecodeMessages(raw)
		_ = AppendChat(nil, msgs)
	}
}
