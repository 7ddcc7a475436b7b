package queueproxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// vllmModels is vLLM's answer to GET /v1/models with one LoRA adapter
// (vLLM's ModelCard, permissions and all).
const vllmModels = `{"object":"list","data":[` +
	`{"id":"llama","object":"model","created":1700000000,"owned_by":"vllm","root":"/models/llama-3-8b","parent":null,"max_model_len":8192,` +
	`"permission":[{"id":"modelperm-1","object":"model_permission","created":1700000000,"allow_create_engine":false,"allow_sampling":true,` +
	`"allow_logprobs":true,"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,"organization":"*","group":null,"is_blocking":false}]},` +
	`{"id":"sql-lora","object":"model","created":1700000000,"owned_by":"vllm","root":"/adapters/sql","parent":"llama","max_model_len":null,"permission":[]}]}`

// modelsEngine is a fake engine whose GET /v1/models answers what status
// and body hold at the time.
type modelsEngine struct {
	*engine
	status atomic.Int32
	body   atomic.Value // string
	calls  atomic.Int64
}

func newModelsEngine(t *testing.T, body string) *modelsEngine {
	t.Helper()
	me := &modelsEngine{}
	me.status.Store(http.StatusOK)
	me.body.Store(body)
	me.engine = newEngine(t, map[string]http.HandlerFunc{
		"GET /v1/models": func(w http.ResponseWriter, r *http.Request) {
			me.calls.Add(1)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(int(me.status.Load()))
			_, _ = io.WriteString(w, me.body.Load().(string))
		},
	})
	return me
}

func (me *modelsEngine) set(status int, body string) {
	me.body.Store(body)
	me.status.Store(int32(status))
}

// awaitCalls waits for n more reads of the model list than now, so that
// the proxy has seen what the engine answers now.
func (me *modelsEngine) awaitCalls(t *testing.T, n int64) {
	t.Helper()
	target := me.calls.Load() + n
	require.Eventually(t, func() bool { return me.calls.Load() >= target }, waitFor, tick)
}

func cardIDs(cards []stats.ModelCard) []string {
	ids := make([]string, 0, len(cards))
	for _, c := range cards {
		ids = append(ids, c.ID)
	}
	return ids
}

// The engine's model cards reach the stats at every scrape, with or
// without the KV model, trimmed to the fields an activator uses; the
// stream carries them.
func TestEngineModelCardsInStat(t *testing.T) {
	want := []stats.ModelCard{
		{ID: "llama", Root: "/models/llama-3-8b", OwnedBy: "vllm", MaxModelLen: 8192},
		{ID: "sql-lora", Root: "/adapters/sql", Parent: "llama", OwnedBy: "vllm"},
	}
	for _, kv := range []string{"--kv-model=true", "--kv-model=false"} {
		t.Run(kv, func(t *testing.T) {
			eng := newModelsEngine(t, vllmModels)
			p := newProxy(t, eng.URL, true, kv)
			require.Eventually(t, func() bool { return len(p.Stat().Engine.Models) == 2 }, waitFor, tick)
			assert.Equal(t, want, p.Stat().Engine.Models)

			m, ok, err := stats.Decode(statMessage(p.Stat()))
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, want, m.Stat.Engine.Models, "what the stream carries")
			assert.Contains(t, string(statMessage(p.Stat())), `"models":[{"id":"llama","root":"/models/llama-3-8b","ownedBy":"vllm","maxModelLen":8192}`)

			// The list follows the engine: an adapter loaded at run time.
			eng.set(http.StatusOK, strings.Replace(vllmModels, `"permission":[]}]}`,
				`"permission":[]},{"id":"chat","object":"model","owned_by":"vllm","root":"/adapters/chat","parent":"llama"}]}`, 1))
			require.Eventually(t, func() bool { return len(p.Stat().Engine.Models) == 3 }, waitFor, tick)
			assert.Equal(t, []string{"llama", "sql-lora", "chat"}, cardIDs(p.Stat().Engine.Models))
		})
	}
}

// The KV model still learns the engine's names from the same read: base
// models and adapters.
func TestEngineModelListFeedsKVModel(t *testing.T) {
	eng := newModelsEngine(t, vllmModels)
	p := newProxy(t, eng.URL, true, "--kv-block-size=4")
	require.Eventually(t, func() bool {
		em := p.kv.models.Load()
		return em != nil && em.listed
	}, waitFor, tick)
	em := p.kv.models.Load()
	assert.Equal(t, map[string]struct{}{"llama": {}}, em.base)
	assert.Equal(t, map[string]struct{}{"sql-lora": {}}, em.adapters)
}

// An engine without a model list (a custom engine: 404), or one that
// answers something else, leaves the stats without cards, and the proxy
// serves as before; after a good list, a bad answer keeps the last cards.
func TestEngineModelListUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"404", http.StatusNotFound, `{"detail":"Not Found"}`},
		{"500", http.StatusInternalServerError, `oops`},
		{"not JSON", http.StatusOK, `<html>models</html>`},
		{"JSON without data", http.StatusOK, `{"object":"list"}`},
		{"data not an array", http.StatusOK, `{"data":{"id":"llama"}}`},
		{"truncated", http.StatusOK, vllmModels[:len(vllmModels)/2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng := newModelsEngine(t, tc.body)
			eng.status.Store(int32(tc.status))
			p := newProxy(t, eng.URL, true)
			eng.awaitCalls(t, 2)
			require.Eventually(t, func() bool { return p.Stat().Engine.Scraped }, waitFor, tick)
			assert.Nil(t, p.Stat().Engine.Models)
			assert.NotContains(t, string(statMessage(p.Stat())), `"models"`)

			eng.set(http.StatusOK, vllmModels)
			require.Eventually(t, func() bool { return len(p.Stat().Engine.Models) == 2 }, waitFor, tick)
			eng.set(tc.status, tc.body)
			eng.awaitCalls(t, 2)
			assert.Equal(t, []string{"llama", "sql-lora"}, cardIDs(p.Stat().Engine.Models), "the last list stays")
			if p.kv != nil {
				assert.True(t, p.kv.models.Load().listed, "and the KV model keeps its names")
			}
		})
	}
}

// Cards are read field by field: an entry without a string id is skipped,
// a field of the wrong type is left out, a max_model_len that is not a
// count reads as unknown.
func TestEngineModelCardsOddFields(t *testing.T) {
	eng := newModelsEngine(t, `{"data":[
		{"id":42,"root":"/numeric-id"},
		"not an object",
		null,
		{"root":"/no-id"},
		{"id":"","root":"/empty-id"},
		{"id":"a","root":7,"parent":null,"owned_by":["x"],"max_model_len":"8192"},
		{"id":"b","root":"/b","max_model_len":-1},
		{"id":"c","root":"/c","max_model_len":4096.5},
		{"id":"d","root":"/d","max_model_len":1e300},
		{"id":"e","root":"/e","max_model_len":4294967296},
		{"id":"f","root":"/f\u00e9\n","max_model_len":4096.0,"parent":"f"},
		{"id":"g","parent":"a","max_model_len":0},
		{"id":"a","root":"/duplicate"}
	]}`)
	p := newProxy(t, eng.URL, true, "--kv-model=false")
	require.Eventually(t, func() bool { return len(p.Stat().Engine.Models) > 0 }, waitFor, tick)
	assert.Equal(t, []stats.ModelCard{
		{ID: "a"}, {ID: "b", Root: "/b"}, {ID: "c", Root: "/c"}, {ID: "d", Root: "/d"}, {ID: "e", Root: "/e"},
		{ID: "f", Root: "/f\u00e9\n", MaxModelLen: 4096}, // its own parent: a base model
		{ID: "g", Parent: "a"},
	}, p.Stat().Engine.Models)
}

// A hostile engine: 10,000 models, strings of a megabyte. The stat stays
// small and bounded, the base model first; the KV model still knows every
// name the engine listed.
func TestEngineModelCardsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"object":"list","data":[`)
	huge := strings.Repeat("x", 1<<20)
	fmt.Fprintf(&b, `{"id":"huge-root","root":%q,"parent":"llama"},`, huge)
	fmt.Fprintf(&b, `{"id":%q,"root":"/huge-id","parent":"llama"},`, huge[:stats.MaxModelCardString+1])
	fmt.Fprintf(&b, `{"id":"huge-owner","owned_by":%q,"parent":"llama"},`, huge[:stats.MaxModelCardString+1])
	for i := range 10000 {
		fmt.Fprintf(&b, `{"id":"adapter-%05d","object":"model","owned_by":"vllm","root":"/adapters/%05d","parent":"llama"},`, i, i)
	}
	b.WriteString(`{"id":"llama","object":"model","owned_by":"vllm","root":"/models/llama","max_model_len":8192}]}`)
	eng := newModelsEngine(t, b.String())
	// Two megabytes to read within a scrape interval: a long one, for slow
	// (race-instrumented, busy) machines.
	p := newProxy(t, eng.URL, true, "--scrape-interval=3s")
	require.Eventually(t, func() bool { return len(p.Stat().Engine.Models) > 0 }, waitFor, tick)

	cards := p.Stat().Engine.Models
	require.LessOrEqual(t, len(cards), stats.MaxModelCards)
	assert.Equal(t, stats.ModelCard{ID: "llama", Root: "/models/llama", OwnedBy: "vllm", MaxModelLen: 8192}, cards[0],
		"the base model comes first, though the engine listed it last")
	total := 0
	for _, c := range cards {
		assert.NotContains(t, c.ID, "huge")
		for _, s := range []string{c.ID, c.Root, c.Parent, c.OwnedBy} {
			require.LessOrEqual(t, len(s), stats.MaxModelCardString)
			total += len(s)
		}
	}
	assert.LessOrEqual(t, total, stats.MaxModelCardBytes)
	assert.Equal(t, "adapter-00000", cards[1].ID, "then the adapters in the engine's order")
	msg := statMessage(p.Stat())
	assert.Less(t, len(msg), stats.MaxModelCardBytes+(64*len(cards))+4096, "the whole stat stays small")

	em := p.kv.models.Load()
	require.NotNil(t, em)
	assert.Len(t, em.adapters, 10003)
	assert.Contains(t, em.base, "llama")
}

// BoundModelCards, which both ends apply (the queue-proxy to what it sends,
// stats.Decode to what it reads).
func TestBoundModelCards(t *testing.T) {
	long := strings.Repeat("r", stats.MaxModelCardString+1)
	in := []stats.ModelCard{
		{ID: "a", MaxModelLen: 4096},
		{ID: ""},
		{ID: "b", Root: long},
		{ID: "c", Parent: long},
		{ID: "d", OwnedBy: long},
		{ID: long},
		{ID: "a", Root: "/duplicate"},
		{ID: "e", MaxModelLen: -5},
		{ID: "f", MaxModelLen: stats.MaxModelLen + 1},
		{ID: "g", Root: strings.Repeat("r", stats.MaxModelCardString)},
	}
	orig := append([]stats.ModelCard(nil), in...)
	out := stats.BoundModelCards(in)
	assert.Equal(t, orig, in, "the input is not modified")
	assert.Equal(t, []stats.ModelCard{{ID: "a", MaxModelLen: 4096}, {ID: "e"}, {ID: "f"}, in[9]}, out)
	assert.Equal(t, out, stats.BoundModelCards(out), "bounding a bounded list changes nothing")
	assert.Nil(t, stats.BoundModelCards(nil))
	assert.Nil(t, stats.BoundModelCards([]stats.ModelCard{{ID: ""}}))

	many := make([]stats.ModelCard, 3*stats.MaxModelCards)
	for i := range many {
		many[i] = stats.ModelCard{ID: fmt.Sprintf("m%d", i)}
	}
	out = stats.BoundModelCards(many)
	require.Len(t, out, stats.MaxModelCards)
	assert.Equal(t, "m0", out[0].ID)

	big := make([]stats.ModelCard, 200)
	for i := range big {
		big[i] = stats.ModelCard{ID: fmt.Sprintf("m%d", i), Root: strings.Repeat("r", stats.MaxModelCardString-10)}
	}
	out = stats.BoundModelCards(big)
	total := 0
	for _, c := range out {
		total += len(c.ID) + len(c.Root)
	}
	assert.LessOrEqual(t, total, stats.MaxModelCardBytes)
	assert.Greater(t, total, stats.MaxModelCardBytes-stats.MaxModelCardString-10)
	assert.Equal(t, out, stats.BoundModelCards(out))
}

// A subscriber bounds what it reads, whatever the queue-proxy sent.
func TestDecodeBoundsModelCards(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"type":"stat","stat":{"pod":"p","engine":{"models":[`)
	for i := range 2000 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"m%d","maxModelLen":-1}`, i)
	}
	fmt.Fprintf(&b, `,{"id":"late","root":%q}]}}}`, strings.Repeat("x", 1<<16))
	m, ok, err := stats.Decode([]byte(b.String()))
	require.NoError(t, err)
	require.True(t, ok)
	cards := m.Stat.Engine.Models
	require.Len(t, cards, stats.MaxModelCards)
	assert.Equal(t, stats.ModelCard{ID: "m0"}, cards[0], "a context length out of range reads as unknown")
}
