package activator

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Fuzz targets of what the activator reads from engines and WebSocket
// clients. `go test` runs their seeds (f.Add and testdata/fuzz/<target>/);
// `make fuzz` explores.

// FuzzCompleteEvents checks copyStream's cut of an SSE stream
// (openai.CompleteEvents), read in the chunks that cuts picks (each byte a
// read's length), against
// openai.EventSplitter: each cut ends a whole event (at most a few blank
// lines after one: empty events), and no whole event is held back.
func FuzzCompleteEvents(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n"), []byte{3, 9})
	f.Add([]byte("data: x\n\r\n\n\ndata: y\n"), []byte{8, 1})
	f.Add([]byte("data: x\n\r\n\r\ndata: y\r\n\r\n"), []byte{})
	f.Add([]byte("\n\n\r\n\r\n\n"), []byte{1, 1, 1})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		var sent []byte // what copyStream forwarded so far
		var pending []byte
		for i, c := 0, 0; i < len(stream); c++ {
			n := len(stream) - i
			if c < len(cuts) {
				n = min(int(cuts[c]), n)
			}
			pending = append(pending, stream[i:i+n]...)
			i += n
			cut := openai.CompleteEvents(pending)
			require.GreaterOrEqual(t, cut, 0)
			require.LessOrEqual(t, cut, len(pending))
			sent = append(sent, pending[:cut]...)
			pending = append([]byte(nil), pending[cut:]...)

			// What was sent splits into whole events, with at most blank
			// lines after the last: no event was torn.
			var s openai.EventSplitter
			require.NoError(t, s.Feed(sent, func([]byte) error { return nil }))
			require.Empty(t, bytes.Trim(s.Rest(), "\r\n"), "sent %q tears an event", sent)
			// What is held holds no whole event.
			var held openai.EventSplitter
			require.NoError(t, held.Feed(pending, func(ev []byte) error {
				t.Fatalf("whole event %q held back (pending %q)", ev, pending)
				return nil
			}))
		}
		require.Equal(t, string(stream), string(sent)+string(pending))
	})
}

// FuzzWebSocketMessage checks what handles raw WebSocket and engine
// messages: the reading of a request_id from any client message, and
// withRequestID on any engine payload (an SSE event's data or a whole
// body), which must give a JSON object that carries the id.
func FuzzWebSocketMessage(f *testing.F) {
	f.Add([]byte(`{"model":"m","request_id":"A"}`), []byte(`"A"`), []byte(`{"id":"c","choices":[]}`))
	f.Add([]byte(`{"request_id":7}`), []byte(`7`), []byte(` { } `))
	f.Add([]byte(`{not json`), []byte(`null`), []byte(``))
	f.Add([]byte(`[]`), []byte(`"ws-1"`), []byte(`[DONE]`))
	f.Add([]byte(`{"request_id":{"a":[1]}}`), []byte(`{"a":[1]}`), []byte(`{"a":1`))
	f.Add([]byte(`"x"`), []byte(`"x"`), []byte(`{"request_id":"engine's","x":1}`))
	f.Fuzz(func(t *testing.T, msg, id, data []byte) {
		// serveWebSocket's reading of a client message.
		if obj, err := openai.Parse(msg); err == nil {
			if rid, ok := obj.Get("request_id"); ok {
				require.True(t, json.Valid(rid), "request_id %q of %q", rid, msg)
				require.NotEmpty(t, idKey(rid))
			}
		}
		if !json.Valid(id) { // ids are raw JSON: the client's, or one we make
			id, _ = json.Marshal(string(id))
		}
		id = bytes.Trim(id, " \t\r\n")
		out := withRequestID(id, data)
		require.True(t, json.Valid(out), "withRequestID(%q, %q) = %q", id, data, out)
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(out, &m), "%q", out)
		trimmed := bytes.Trim(data, " \t\r\n")
		obj, err := openai.Parse(trimmed)
		if errors.Is(err, openai.ErrDuplicateKey) {
			return // passed on as it came, after the id
		}
		o, perr := openai.Parse(out)
		require.NoError(t, perr, "withRequestID(%q, %q) = %q", id, data, out)
		got, _ := o.Get("request_id")
		require.Equal(t, string(id), string(got))
		if err != nil { // not an object: passed on as a string
			require.Len(t, m, 2, "%q", out)
			var s string
			require.NoError(t, json.Unmarshal(m["data"], &s))
			want, _ := json.Marshal(string(trimmed))
			require.JSONEq(t, string(want), string(m["data"]))
			return
		}
		for k, v := range m {
			if k != "request_id" {
				orig, ok := obj.Get(k)
				require.True(t, ok, "member %q added to %q", k, data)
				require.JSONEq(t, string(orig), string(v))
			}
		}
		for _, k := range topKeys(trimmed) {
			if k != "request_id" {
				_, ok := m[k]
				require.True(t, ok, "member %q of %q lost", k, data)
			}
		}
	})
}

// topKeys lists the top-level keys of a JSON object, decoded.
func topKeys(obj []byte) []string {
	var m map[string]json.RawMessage
	_ = json.Unmarshal(obj, &m)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}
