package openai

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseAndGet(t *testing.T) {
	body := []byte(` { "model" : "m\"x" , "stream":true, "n": 3, "messages":[{"role":"user","content":"a}\"]"}], "o":{"k":[1,{"z":"}"}]} } `)
	o, err := Parse(body)
	require.NoError(t, err)
	m, ok := o.String("model")
	require.True(t, ok)
	require.Equal(t, `m"x`, m)
	require.True(t, o.Bool("stream"))
	n, ok := o.Int("n")
	require.True(t, ok)
	require.Equal(t, 3, n)
	v, ok := o.Get("o")
	require.True(t, ok)
	require.JSONEq(t, `{"k":[1,{"z":"}"}]}`, string(v))
	_, ok = o.Get("absent")
	require.False(t, ok)
}

// An Index reuses its storage: a second parse allocates nothing, what an
// earlier parse indexed does not show, a body made by Set outlives the
// next parse, and a hostile body's large index is not kept.
func TestIndexReusesItsStorage(t *testing.T) {
	var x Index
	first, err := x.Parse([]byte(`{"model":"a","stream":true,"n":1,"x":2,"y":3,"z":4,"w":5,"v":6,"u":7}`))
	require.NoError(t, err)
	set := first.Set("model", []byte(`"b"`))
	o, err := x.Parse([]byte(`{"n":2}`))
	require.NoError(t, err)
	_, ok := o.Get("model")
	require.False(t, ok, "a member of the earlier body")
	n, _ := o.Int("n")
	require.Equal(t, 2, n)
	again, err := Parse(set)
	require.NoError(t, err)
	m, _ := again.String("model")
	require.Equal(t, "b", m, "a body made by Set is its own")
	require.True(t, again.Bool("stream"))

	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := x.Parse(body); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)

	var many strings.Builder
	many.WriteString("{")
	for i := range 1000 {
		if i > 0 {
			many.WriteString(",")
		}
		fmt.Fprintf(&many, "%q:%d", "k"+strconv.Itoa(i), i)
	}
	many.WriteString("}")
	o, err = x.Parse([]byte(many.String()))
	require.NoError(t, err)
	v, _ := o.Int("k999")
	require.Equal(t, 999, v)
	require.LessOrEqual(t, cap(x.members), maxKeptMembers, "a hostile body's index is not kept")

	// A key's decoded copy does not outlive its body in the kept storage,
	// whether its parse succeeded or failed.
	for _, b := range []string{`{"a":1,"b":2,"c":3,"\u006b":4}`, `{"a":1,"b":2,"c":3,"\u006b":4,"k":5}`} {
		_, _ = x.Parse([]byte(b))
		_, err = x.Parse([]byte(`{"n":1}`))
		require.NoError(t, err)
		for i, m := range x.members[:cap(x.members)] {
			require.Empty(t, m.decoded, "%s: slot %d keeps a decoded key", b, i)
		}
	}
}

func TestParseRejects(t *testing.T) {
	_, err := Parse([]byte(`{"a":`))
	require.ErrorIs(t, err, ErrMalformedJSONValue)
	_, err = Parse([]byte(`[1]`))
	require.ErrorIs(t, err, ErrNotObject)
}

func TestSetAndDeleteKeepTheRestByteForByte(t *testing.T) {
	body := []byte(`{"model":"a@tag", "x" : [1, 2],"stream":false}`)
	o, err := Parse(body)
	require.NoError(t, err)
	require.Equal(t, `{"model":"a", "x" : [1, 2],"stream":false}`, string(o.Set("model", []byte(`"a"`))))
	require.Equal(t, `{"model":"a@tag", "x" : [1, 2],"stream":false,"stream_options":{"include_usage":true}}`,
		string(o.Set("stream_options", []byte(`{"include_usage":true}`))))
	require.Equal(t, `{"x" : [1, 2],"stream":false}`, string(o.Delete("model")))
	require.Equal(t, `{"model":"a@tag", "stream":false}`, string(o.Delete("x")))
	require.Equal(t, `{"model":"a@tag", "x" : [1, 2]}`, string(o.Delete("stream")))
	for _, out := range [][]byte{o.Delete("model"), o.Delete("x"), o.Delete("stream"), o.Set("new", []byte(`1`))} {
		require.True(t, json.Valid(out), string(out))
	}
	empty, err := Parse([]byte(`{}`))
	require.NoError(t, err)
	require.Equal(t, `{"k":1}`, string(empty.Set("k", []byte(`1`))))
	only, err := Parse([]byte(`{"k":1}`))
	require.NoError(t, err)
	require.Equal(t, `{}`, string(only.Delete("k")))
}

func TestEventSplitter(t *testing.T) {
	var s EventSplitter
	var got []string
	collect := func(ev []byte) error { got = append(got, string(ev)); return nil }
	require.NoError(t, s.Feed([]byte("data: {\"a\":1}\n\nda"), collect))
	require.NoError(t, s.Feed([]byte("ta: [DONE]\r\n\r\n"), collect))
	require.Equal(t, []string{"data: {\"a\":1}\n\n", "data: [DONE]\r\n\r\n"}, got)
	d, ok := EventData([]byte(got[1]))
	require.True(t, ok)
	require.Equal(t, "[DONE]", string(d))
}

func TestEventSplitterAcrossFeeds(t *testing.T) {
	stream := "data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n"
	for size := 1; size <= len(stream); size++ {
		var s EventSplitter
		var got []string
		for i := 0; i < len(stream); i += size {
			end := min(i+size, len(stream))
			require.NoError(t, s.Feed([]byte(stream[i:end]), func(ev []byte) error { got = append(got, string(ev)); return nil }))
		}
		require.Equal(t, []string{"data: {\"a\":1}\n\n", "data: {\"b\":2}\r\n\r\n", "data: [DONE]\n\n"}, got, "feed size %d", size)
		require.Empty(t, s.Rest())
	}
}

func TestParseRefusesDuplicateKeys(t *testing.T) {
	for body, key := range map[string]string{
		`{"model":"a","model":"b"}`:                      "model",
		`{"model":"a","mod\u0065l":"b"}`:                 "model",
		`{"m\u006fdel":"a", "model" : "b"}`:              "model",
		`{"\u006d\u006f\u0064\u0065\u006c":1,"model":2}`: "model",
		`{"stream":false,"x":1,"stream":true}`:           "stream",
		`{"a\/b":1,"a/b":2}`:                             "a/b",
		`{"\ud83d\ude00":1,"😀":2}`:                       "😀",
		`{"":1,"":2}`:                                    "",
		// encoding/json decodes a lone surrogate and invalid UTF-8 alike
		// to U+FFFD.
		`{"\ud800":1,"\ufffd":2}`:      "\ufffd",
		"{\"a\xff\":1,\"a\xfe\":2}":    "a\ufffd",
		"{\"a\xff\":1,\"a\\ufffd\":2}": "a\ufffd",
	} {
		_, err := Parse([]byte(body))
		require.ErrorIs(t, err, ErrDuplicateKey, body)
		var dup *DuplicateKeyError
		require.ErrorAs(t, err, &dup, body)
		require.Equal(t, key, dup.Key, body)
		require.Contains(t, err.Error(), strconv.Quote(key))
	}
	// Nested objects are values, left to whoever reads them.
	_, err := Parse([]byte(`{"a":{"k":1,"k":2},"b":[{"k":1,"k":2}]}`))
	require.NoError(t, err)
}

func TestParseRefusesDuplicatesAmongManyKeys(t *testing.T) {
	for _, n := range []int{dupIndexAt - 1, dupIndexAt, dupIndexAt + 1, 1000} {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		unique := b.String()[:b.Len()-1] + "}"
		o, err := Parse([]byte(unique))
		require.NoError(t, err, "%d keys", n)
		v, ok := o.Get(fmt.Sprintf("k%d", n-1))
		require.True(t, ok)
		require.Equal(t, strconv.Itoa(n-1), string(v))
		for _, dup := range []string{`"k0":0`, fmt.Sprintf(`"k%d":0`, n-1), `"\u006b0":0`} {
			_, err = Parse([]byte(b.String() + dup + "}"))
			require.ErrorIs(t, err, ErrDuplicateKey, "%d keys, then %s", n, dup)
		}
	}
}

func TestKeysMatchDecoded(t *testing.T) {
	body := []byte(`{"mod\u0065l":"m\u00e9","str\u0065am":true,"a\"b":1,"\ud83d\ude00":"x"}`)
	o, err := Parse(body)
	require.NoError(t, err)
	m, ok := o.String("model")
	require.True(t, ok)
	require.Equal(t, "mé", m)
	require.True(t, o.Bool("stream"))
	v, ok := o.Get(`a"b`)
	require.True(t, ok)
	require.Equal(t, "1", string(v))
	_, ok = o.Get("😀")
	require.True(t, ok)
	require.Equal(t, `{"mod\u0065l":"b","str\u0065am":true,"a\"b":1,"\ud83d\ude00":"x"}`, string(o.Set("model", []byte(`"b"`))))
	require.Equal(t, `{"mod\u0065l":"m\u00e9","a\"b":1,"\ud83d\ude00":"x"}`, string(o.Delete("stream")))
	// A new key that needs quoting is quoted.
	out := o.Set("new\"key\n", []byte(`2`))
	o2, err := Parse(out)
	require.NoError(t, err)
	v, ok = o2.Get("new\"key\n")
	require.True(t, ok)
	require.Equal(t, "2", string(v))
}

func TestParseErrorMapsToOpenAIError(t *testing.T) {
	_, err := Parse([]byte(`{"model":"a","model":"b"}`))
	e := ParseError(err)
	require.Equal(t, TypeInvalidRequest, e.Type)
	require.Equal(t, "duplicate_key", e.Code)
	require.NotNil(t, e.Param)
	require.Equal(t, "model", *e.Param)
	require.Contains(t, e.Message, `"model"`)
	_, err = Parse([]byte(`{"model":`))
	e = ParseError(err)
	require.Equal(t, "invalid_json", e.Code)
	require.Nil(t, e.Param)
	_, err = Parse([]byte(`[]`))
	require.Equal(t, "invalid_json", ParseError(err).Code)
}

// smallBody is a typical chat request: several short top-level keys.
var smallBody = []byte(`{"model":"llama","messages":[{"role":"user","content":"What is the capital of France?"}],` +
	`"stream":true,"max_tokens":128,"temperature":0.7,"top_p":0.9,"stream_options":{"include_usage":true}}`)

func BenchmarkParseSmall(b *testing.B) {
	b.SetBytes(int64(len(smallBody)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(smallBody); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseGetModel is the activator's reading of a body: one parse,
// then the fields it routes on.
func BenchmarkParseGetModel(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		o, err := Parse(smallBody)
		if err != nil {
			b.Fatal(err)
		}
		if _, ok := o.String("model"); !ok {
			b.Fatal("no model")
		}
		o.Bool("stream")
	}
}
