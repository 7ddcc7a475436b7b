package openai

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// topKeys returns the top-level keys of a valid JSON object in order, as
// encoding/json decodes them.
func topKeys(t *testing.T, body []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	require.NoError(t, err)
	require.Equal(t, json.Delim('{'), tok)
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		require.NoError(t, err)
		keys = append(keys, tok.(string))
		var v json.RawMessage
		require.NoError(t, dec.Decode(&v))
	}
	return keys
}

// decodeNumbers is json.Unmarshal with numbers kept as written
// (json.Number), so that any valid JSON decodes (1e1000 overflows float64).
func decodeNumbers(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}

// parseAgrees checks Parse against encoding/json: it accepts exactly the
// valid JSON objects without a repeated top-level key, refuses the others
// with the right error, and indexes the same top-level members under the
// keys encoding/json decodes.
func parseAgrees(t *testing.T, body []byte) {
	t.Helper()
	o, err := Parse(body)
	var top any
	require.Equal(t, json.Valid(body), Valid(body), "%q", body)
	if !json.Valid(body) {
		require.ErrorIs(t, err, ErrMalformedJSONValue, "%q", body)
		return
	}
	require.NoError(t, decodeNumbers(body, &top))
	obj, isObj := top.(map[string]any)
	if !isObj {
		require.ErrorIs(t, err, ErrNotObject, "%q", body)
		return
	}
	keys := topKeys(t, body)
	if len(obj) < len(keys) {
		var dup *DuplicateKeyError
		require.ErrorAs(t, err, &dup, "%q", body)
		require.ErrorIs(t, err, ErrDuplicateKey)
		require.Contains(t, keys, dup.Key)
		return
	}
	require.NoError(t, err, "%q", body)
	require.Len(t, o.members, len(keys))
	for i := range o.members {
		require.Equal(t, keys[i], o.name(&o.members[i]), "member %d of %q", i, body)
		raw, ok := o.Get(keys[i])
		require.True(t, ok)
		require.True(t, json.Valid(raw), "member %q of %q: %q", keys[i], body, raw)
		var want any
		require.NoError(t, decodeNumbers(raw, &want))
		require.Equal(t, obj[keys[i]], want, "member %q of %q", keys[i], body)
		if s, isString := want.(string); isString {
			got, ok := o.String(keys[i])
			require.True(t, ok)
			require.Equal(t, s, got, "member %q of %q", keys[i], body)
		}
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
