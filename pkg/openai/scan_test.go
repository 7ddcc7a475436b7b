package openai

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// parseAgrees checks Parse against encoding/json: it accepts exactly the
// valid JSON objects, and indexes the same top-level members.
func parseAgrees(t *testing.T, body []byte) {
	t.Helper()
	o, err := Parse(body)
	var top any
	valid := json.Valid(body)
	if !valid {
		require.ErrorIs(t, err, ErrMalformedJSONValue, "%q", body)
		return
	}
	_ = json.Unmarshal(body, &top)
	obj, isObj := top.(map[string]any)
	if !isObj {
		require.ErrorIs(t, err, ErrNotObject, "%q", body)
		return
	}
	require.NoError(t, err, "%q", body)
	for _, m := range o.members {
		if strings.Contains(m.key, `\`) || !utf8.ValidString(m.key) {
			continue // keys are compared raw; encoding/json unescapes and repairs them
		}
		raw, ok := o.Get(m.key)
		require.True(t, ok)
		require.True(t, json.Valid(raw), "member %q of %q: %q", m.key, body, raw)
		_, present := obj[m.key]
		require.True(t, present, "member %q of %q", m.key, body)
	}
}

func TestParseAgreesWithEncodingJSON(t *testing.T) {
	cases := []string{
		`{}`, ` { } `, `{"a":1}`, `{"a":-0.5e+10,"b":[true,false,null,"x\u00e9\n"],"c":{"d":{}}}`,
		`{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":tru}`, `{"a":nul}`,
		`{"a":"\x"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`, "{\"a\":\"tab\there\"}", "{\"a\":\"nl\nhere\"}",
		`{"a":1,}`, `{,"a":1}`, `{"a" 1}`, `{"a":1 "b":2}`, `{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`,
		`{"a":1}x`, `{"a":1}}`, `{"a":1`, `{"a"`, `{`, ``, `   `, `[]`, `[1]`, `"s"`, `3`, `null`, `[1,`,
		`{"a":"` + strings.Repeat("long string with \\\"escapes\\\" and ünïcödé ", 200) + `"}`,
		`{"a":"ends with backslash\`, `{"a":"unterminated`, `{"k\"ey":1}`, `{"a":"\/\b\f\r\t"}`,
		"{\"a\":\"\xff\xfe invalid utf8\"}", `{"a":[[[[[[[]]]]]]]}`, `{"a":{"b":{"c":[{"d":"}"}]}}}`,
	}
	for _, c := range cases {
		parseAgrees(t, []byte(c))
	}
	// Every prefix of a valid body is handled without panicking, and agrees.
	full := `{"model":"m","messages":[{"role":"user","content":"héllo \"w\" \\ \u00e9"}],"n":-1.5e3,"s":true}`
	for i := range len(full) + 1 {
		parseAgrees(t, []byte(full[:i]))
	}
}

func TestParseDepthLimit(t *testing.T) {
	deep := `{"a":` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `}`
	_, err := Parse([]byte(deep))
	require.ErrorIs(t, err, ErrMalformedJSONValue)
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":"x\"y","b":[1,{"c":null}]}`, `[1]`, `{"a":1e5}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) { parseAgrees(t, body) })
}

func BenchmarkParse(b *testing.B) {
	body := []byte(`{"model":"llama","stream":true,"max_tokens":128,"messages":[{"role":"system","content":"` +
		strings.Repeat("You are a helpful assistant. ", 1100) + `"},{"role":"user","content":"What is the capital of France?"}]}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJSONValid(b *testing.B) {
	body := []byte(`{"model":"llama","stream":true,"max_tokens":128,"messages":[{"role":"system","content":"` +
		strings.Repeat("You are a helpful assistant. ", 1100) + `"},{"role":"user","content":"What is the capital of France?"}]}`)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		json.Valid(body)
	}
}
