package activator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// TestDuplicateKeysAreRefused: a body that names a key twice is read
// differently by different decoders (this one took the first "model",
// Python and Go engines the last), so it is refused before routing, over
// HTTP and over WebSocket, with the escaped spelling of a key counting as
// the key.
func TestDuplicateKeysAreRefused(t *testing.T) {
	h := newHarness(t, nil)
	var reached atomic.Int32
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r1", func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{}`)
	})})
	bodies := []string{
		`{"model":"m","model":"other"}`,
		`{"model":"other","mod\u0065l":"m"}`,
		`{"model":"m","stream":false,"messages":[],"stream":true}`,
	}
	for _, body := range bodies {
		resp, b := post(t, h.srv.URL, body)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, body)
		requireOpenAIError(t, b, "duplicate_key")
		var env openai.Envelope
		require.NoError(t, json.Unmarshal(b, &env))
		require.Equal(t, openai.TypeInvalidRequest, env.Error.Type)
		require.NotNil(t, env.Error.Param, string(b))
	}
	resp, b := post(t, h.srv.URL, `{"model":"m","model":`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	requireOpenAIError(t, b, "invalid_json")

	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(h.srv.URL, "http")+PathChat, nil)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"model":"m","request_id":"a","model":"other"}`)))
	_, msg, err := conn.ReadMessage()
	require.NoError(t, err)
	var m struct {
		RequestID json.RawMessage `json:"request_id"`
		Error     openai.Error    `json:"error"`
	}
	require.NoError(t, json.Unmarshal(msg, &m), string(msg))
	require.Equal(t, "duplicate_key", m.Error.Code, string(msg))
	require.Zero(t, reached.Load(), "no refused body reached the engine")
}

// TestWebSocketOddEnginePayloads: an engine that streams an event with
// empty or non-JSON data, or answers 200 with an empty body, once made the
// activator panic (slicing an empty payload) and so die with every
// connection; each such payload now reaches the client as "data", and the
// request ends with "done".
func TestWebSocketOddEnginePayloads(t *testing.T) {
	h := newHarness(t, nil)
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r1", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Stream bool `json:"stream"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			return // 200, empty body
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data:\n\ndata: not json\n\ndata:  {\"i\":1,\"request_id\":\"engine's\"}\n\ndata: [DONE]\n\n")
	})})
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(h.srv.URL, "http")+PathChat, nil)
	require.NoError(t, err)
	defer conn.Close()
	read := func() map[string]json.RawMessage {
		t.Helper()
		_, msg, err := conn.ReadMessage()
		require.NoError(t, err)
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(msg, &m), string(msg))
		require.NotContains(t, m, "error", string(msg))
		return m
	}
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"model":"m","stream":true,"request_id":"s"}`)))
	for _, want := range []map[string]string{
		{"request_id": `"s"`, "data": `""`},
		{"request_id": `"s"`, "data": `"not json"`},
		{"request_id": `"s"`, "i": `1`},
		{"request_id": `"s"`, "type": `"done"`},
	} {
		got := map[string]string{}
		for k, v := range read() {
			got[k] = string(v)
		}
		require.Equal(t, want, got)
	}
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"model":"m","request_id":"b"}`)))
	require.Equal(t, json.RawMessage(`""`), read()["data"])
	require.Equal(t, json.RawMessage(`"done"`), read()["type"])
}
