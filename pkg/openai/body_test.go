package openai

import (
	"encoding/json"
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
