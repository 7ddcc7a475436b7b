package openai

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// Fuzz targets of the request parser and the SSE splitter. `go test` runs
// their seeds (f.Add and testdata/fuzz/<target>/); `make fuzz` explores.

// FuzzParse checks Parse against encoding/json on any input: the same
// verdict (a valid object without a repeated top-level key, or which error),
// the same members under the same decoded keys, and no panic.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"a":1}`, `{"a":"x\"y","b":[1,{"c":null}]}`, `[1]`, `{"a":1e5}`, `{}`, ` {"a" : [] } `,
		`{"model":"a","model":"b"}`, `{"model":"a","mod\u0065l":"b"}`, `{"\ud800":1,"\udc00":2}`,
		`{"\ud83d\ude00":1,"😀":2}`, "{\"a\xff\":1,\"a\xfe\":2}", `{"a\/b":1,"a/b":2}`, `{"k":{"k":1,"k":2}}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		parseAgrees(t, body)
		indexAgrees(t, body)
	})
}

// indexAgrees checks that an Index that parsed a larger body before parses
// body exactly as Parse does: nothing of the earlier members shows.
func indexAgrees(t *testing.T, body []byte) {
	t.Helper()
	var x Index
	_, err := x.Parse([]byte(`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"\u006a":10}`))
	require.NoError(t, err)
	want, wantErr := Parse(body)
	got, gotErr := x.Parse(body)
	if wantErr != nil {
		require.EqualError(t, gotErr, wantErr.Error())
		return
	}
	require.NoError(t, gotErr)
	require.Equal(t, want.raw, got.raw)
	require.Equal(t, want.members, got.members)
}

// FuzzSetDelete checks that what Set and Delete return parses, holds what
// was set (or no longer holds what was deleted), and leaves every other
// member as it was.
func FuzzSetDelete(f *testing.F) {
	f.Add([]byte(`{"model":"a@tag","x":[1,2],"stream":false}`), "model", []byte(`"a"`))
	f.Add([]byte(`{"model":"a"}`), "stream_options", []byte(`{"include_usage":true}`))
	f.Add([]byte(`{}`), "k", []byte(` 1 `))
	f.Add([]byte(`{"mod\u0065l":"a","b":1}`), "model", []byte(`null`))
	f.Add([]byte(`{"a\"b":1}`), `a"b`, []byte(`[]`))
	f.Add([]byte(`{"\ufffd":1}`), "\xff", []byte(`2`))
	f.Add([]byte(`{"k":1}`), "new\nkey<&>", []byte(`not json`))
	f.Fuzz(func(t *testing.T, body []byte, key string, value []byte) {
		o, err := Parse(body)
		if err != nil {
			return
		}
		if !json.Valid(value) {
			value, _ = json.Marshal(string(value))
		}
		want := bytes.Trim(value, " \t\r\n")
		// The key as it reads back: invalid UTF-8 turns into U+FFFD.
		name := string([]rune(key))
		others := func(t *testing.T, got Object) {
			t.Helper()
			for i := range o.members {
				k := o.name(&o.members[i])
				if k == name {
					continue
				}
				before, _ := o.Get(k)
				after, ok := got.Get(k)
				require.True(t, ok, "member %q lost", k)
				require.Equal(t, string(before), string(after), "member %q", k)
			}
		}

		set := o.Set(key, value)
		got, err := Parse(set)
		require.NoError(t, err, "Set(%q, %q) on %q gave %q", key, value, body, set)
		v, ok := got.Get(key)
		require.True(t, ok, "Set(%q) on %q gave %q", key, body, set)
		require.Equal(t, string(want), string(v))
		v, ok = got.Get(name)
		require.True(t, ok)
		require.Equal(t, string(want), string(v))
		others(t, got)
		_, had := o.Get(key)
		if had {
			require.Len(t, got.members, len(o.members))
		} else {
			require.Len(t, got.members, len(o.members)+1)
		}

		del := o.Delete(key)
		got, err = Parse(del)
		require.NoError(t, err, "Delete(%q) on %q gave %q", key, body, del)
		_, ok = got.Get(key)
		require.False(t, ok, "Delete(%q) on %q gave %q", key, body, del)
		others(t, got)
		if had {
			require.Len(t, got.members, len(o.members)-1)
		} else {
			require.Equal(t, string(body), string(del))
		}
	})
}

// FuzzEventSplitter feeds one stream whole and in the chunks that cuts
// picks (each byte a chunk length), and checks the same events come out;
// that every event ends with a blank line and holds no earlier one; and
// that events and rest are the stream, byte for byte.
func FuzzEventSplitter(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n"), []byte{1, 2, 3})
	f.Add([]byte("data: x\n\r\n\n\ndata: y\n"), []byte{5, 1})
	f.Add([]byte("event: e\ndata: a\ndata: b\n\n: comment\n\n"), []byte{0, 7})
	f.Add([]byte("\n\n\r\n\r\n\n"), []byte{1})
	f.Add([]byte("data:\n\n"), []byte{})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		whole, rest := split(t, stream, [][]byte{stream})
		var chunks [][]byte
		for i, c := 0, 0; i < len(stream); c++ {
			n := len(stream) - i
			if c < len(cuts) {
				n = min(int(cuts[c]), n) // 0: an empty Feed
			}
			chunks = append(chunks, stream[i:i+n])
			i += n
		}
		chunked, chunkedRest := split(t, stream, chunks)
		require.Equal(t, whole, chunked)
		require.Equal(t, string(rest), string(chunkedRest))
		var joined []byte
		for _, ev := range whole {
			end, n := eventEnd([]byte(ev), 0)
			require.Equal(t, len(ev), end+n, "event %q ends at its first blank line", ev)
			joined = append(joined, ev...)
		}
		require.Equal(t, string(stream), string(joined)+string(rest))
		end, _ := eventEnd(rest, 0)
		require.Negative(t, end, "rest %q holds an event", rest)
		for _, ev := range whole {
			EventData([]byte(ev)) // must not panic
		}
	})
}

// split feeds chunks to a fresh EventSplitter and returns the events and
// what is left.
func split(t *testing.T, stream []byte, chunks [][]byte) ([]string, []byte) {
	t.Helper()
	var s EventSplitter
	var got []string
	for _, c := range chunks {
		require.NoError(t, s.Feed(c, func(ev []byte) error {
			got = append(got, string(ev))
			return nil
		}), "%q", stream)
	}
	return got, append([]byte(nil), s.Rest()...)
}

// FuzzUnquote checks the key decoder against encoding/json's.
func FuzzUnquote(f *testing.F) {
	for _, s := range []string{`a`, `\u00e9`, `\ud83d\ude00`, `\ud800`, `\ud800\u0041`, `\udc00\ud800`, "\xff\xfe", `\"\\\/\b\f\n\r\t`, "é\\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		quoted := append(append([]byte{'"'}, raw...), '"')
		var want string
		if json.Unmarshal(quoted, &want) != nil {
			return // not a JSON string: Parse never asks
		}
		got := decodeKey(raw)
		if got == "" {
			got = string(raw)
			require.True(t, utf8.Valid(raw))
		}
		require.Equal(t, want, got, "%q", raw)
		require.Equal(t, json.Valid(quoted), Valid(quoted))
	})
}

// FuzzWith checks With and Without against Parse: the object they return
// is the one parsing their body gives, and their bodies are Set's and
// Delete's.
func FuzzWith(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":[2], "c" : {"d":3} }`), "b", []byte(`"x"`), "c")
	f.Add([]byte(`{ }`), "new", []byte(`true`), "new")
	f.Add([]byte(`{"m\u0065x":1}`), "mex", []byte(`{}`), "mex")
	f.Add([]byte(`{"a":1}`), "q\"k\u00e9", []byte(`null`), "a")
	f.Add([]byte(`{"a":1,"b":2}`), "a", []byte(`22`), "b")
	f.Fuzz(func(t *testing.T, body []byte, key string, value []byte, del string) {
		o, err := Parse(body)
		if err != nil || !json.Valid(value) || !utf8.ValidString(key) {
			return
		}
		value = bytes.TrimSpace(value)
		w := o.With(key, value)
		require.Equal(t, string(o.Set(key, value)), string(w.Raw()))
		reparsed, err := Parse(w.Raw())
		require.NoError(t, err, "%q", w.Raw())
		require.Equal(t, reparsed.members, w.members, "%q", w.Raw())
		d := w.Without(del)
		require.Equal(t, string(w.Delete(del)), string(d.Raw()))
		reparsed, err = Parse(d.Raw())
		require.NoError(t, err, "%q", d.Raw())
		require.Equal(t, reparsed.members, d.members, "%q", d.Raw())
	})
}
