package activator

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/tokenizer"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// tokenizingEngine is a replica whose engine tokenizes every prompt as
// tokens, and records what it was asked.
type tokenizingEngine struct {
	name   string
	tokens []uint32
	status int // of /tokenize; 0 = 200

	mu        sync.Mutex
	tokenized []map[string]json.RawMessage
	served    int
}

func (e *tokenizingEngine) endpoint(t *testing.T) fleet.Endpoint {
	return backend(t, e.name, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e.mu.Lock()
		defer e.mu.Unlock()
		if r.URL.Path == "/tokenize" {
			var m map[string]json.RawMessage
			_ = json.Unmarshal(body, &m)
			e.tokenized = append(e.tokenized, m)
			if e.status != 0 {
				w.WriteHeader(e.status)
				return
			}
			out, _ := json.Marshal(map[string]any{"count": len(e.tokens), "tokens": e.tokens, "max_model_len": 8192})
			_, _ = w.Write(out)
			return
		}
		e.served++
		fmt.Fprintf(w, `{"served_by":%q}`, e.name)
	})
}

func seqTokens(n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(1000 + i*7)
	}
	return out
}

// preciseFleet is an activator with one revision of two replicas, a and b,
// routed by prefix only, whose engines tokenize as tk says.
func preciseFleet(t *testing.T, tk v1alpha1.TokenizerSpec, a, b *tokenizingEngine) (*Activator, *fastServer, fleet.Key) {
	t.Helper()
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	svc := ServiceConfig{Namespace: "default", Name: "svc", Model: "m",
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}},
		Revisions: []RevisionConfig{{Name: "m-1", Tokenizer: tk}},
		Routing:   []v1alpha1.RoutingPlugin{{Name: "kv-cache-aware", Weight: 1}}}
	require.NoError(t, act.SetServices([]ServiceConfig{svc}))
	k := svc.Key("m-1")
	act.SetEndpoints(k, []fleet.Endpoint{a.endpoint(t), b.endpoint(t)})
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)
	return act, srv, k
}

// With the engine's tokenizer, the activator's prefix keys are the keys of
// the engine's own KV events: a prompt goes to the replica whose engine
// reported its blocks, which the text keys would never match.
func TestPreciseRoutingAsksTheEngine(t *testing.T) {
	toks := seqTokens(64)
	a := &tokenizingEngine{name: "a", tokens: toks}
	b := &tokenizingEngine{name: "b", tokens: toks}
	act, srv, k := preciseFleet(t, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine, Path: "/tokenize"}, a, b)
	require.True(t, act.Index(k).Apply(stats.KVEvent{Pod: "b", BlockSize: 16, Seq: 1, Reset: true,
		Added: prompt.AppendTokenBlockHashes(nil, toks, 16)}))

	body := `{"model":"m","messages":[{"role":"user","content":"hello"}],"tools":[{"type":"function","function":{"name":"f"}}],"temperature":0.5}`
	for range 4 {
		resp, out := post(t, srv.URL, body)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
		require.Contains(t, string(out), `"served_by":"b"`)
	}
	a.mu.Lock()
	b.mu.Lock()
	asked := append(append([]map[string]json.RawMessage(nil), a.tokenized...), b.tokenized...)
	a.mu.Unlock()
	b.mu.Unlock()
	require.Len(t, asked, 4, "one tokenization per request")
	// The engine is asked with the fields its chat template reads, as sent.
	assert.JSONEq(t, `"m"`, string(asked[0]["model"]))
	assert.JSONEq(t, `[{"role":"user","content":"hello"}]`, string(asked[0]["messages"]))
	assert.JSONEq(t, `[{"type":"function","function":{"name":"f"}}]`, string(asked[0]["tools"]))
	assert.NotContains(t, asked[0], "temperature")
}

// An engine that cannot tokenize costs prefix hits, never the request.
func TestPreciseRoutingFailureFallsBack(t *testing.T) {
	a := &tokenizingEngine{name: "a", status: http.StatusNotFound}
	b := &tokenizingEngine{name: "b", status: http.StatusNotFound}
	act, srv, _ := preciseFleet(t, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine, Path: "/tokenize"}, a, b)
	resp, out := post(t, srv.URL, `{"model":"m","messages":[{"role":"user","content":"hello"}]}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
	assert.Equal(t, 1.0, testutil.ToFloat64(act.metrics.tokenizeErrors))
}

// With a tokenizer file the activator tokenizes the canonical prompt itself.
func TestPreciseRoutingWithATokenizerFile(t *testing.T) {
	b, err := tokenizer.Train([]string{"the quick brown fox jumps over the lazy dog, again and again"}, 300)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	tok, err := tokenizer.Load(path)
	require.NoError(t, err)

	body := `{"model":"m","messages":[{"role":"user","content":"the quick brown fox jumps over the lazy dog, again and again and again"}]}`
	obj, err := openai.Parse([]byte(body))
	require.NoError(t, err)
	text, err := prompt.AppendRequest(nil, obj, true)
	require.NoError(t, err)
	toks := tok.AppendEncode(nil, text)
	require.GreaterOrEqual(t, len(toks), 4)

	ea, eb := &tokenizingEngine{name: "a"}, &tokenizingEngine{name: "b"}
	act, srv, k := preciseFleet(t, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerFile, Path: path}, ea, eb)
	require.True(t, act.Index(k).Apply(stats.KVEvent{Pod: "a", BlockSize: 2, Seq: 1, Reset: true,
		Added: prompt.AppendTokenBlockHashes(nil, toks, 2)}))
	for range 3 {
		resp, out := post(t, srv.URL, body)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
		require.Contains(t, string(out), `"served_by":"a"`)
	}
	assert.Empty(t, ea.tokenized, "a tokenizer file needs no engine")
}

func TestTokenizeBody(t *testing.T) {
	for _, tc := range []struct {
		api, body, want string
	}{
		{scheduler.APIChat, `{"model":"x","messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false,"stream":true}`,
			`{"model":"m","messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false}`},
		{scheduler.APICompletions, `{"model":"x","prompt":"hello","max_tokens":3}`, `{"model":"m","prompt":"hello"}`},
		{scheduler.APICompletions, `{"model":"x","prompt":[1,2,3]}`, ""},
		{scheduler.APIEmbeddings, `{"model":"x","input":"a"}`, ""},
	} {
		obj, err := openai.Parse([]byte(tc.body))
		require.NoError(t, err)
		got, err := tokenizeBody(&scheduler.Request{Body: obj, API: tc.api}, "m")
		if tc.want == "" {
			require.Error(t, err, tc.body)
			continue
		}
		require.NoError(t, err)
		require.JSONEq(t, tc.want, string(got))
	}
}
