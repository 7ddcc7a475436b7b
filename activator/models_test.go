package activator

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
	"github.com/kvasir-serving/kvasir/queueproxy"
)

// modelsHarness is an activator serving model "m" with LoRA adapter "sql"
// (revision m-1, 100%; m-2 tagged "canary"), and model "o" (revision o-1),
// with no stats streams: tests set the pods' reports.
type modelsHarness struct {
	act *Activator
	srv *fastServer
}

func newModelsHarness(t *testing.T) *modelsHarness {
	t.Helper()
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	require.NoError(t, act.SetServices([]ServiceConfig{{
		Namespace: "default", Name: "svc", Model: "m", LoRAAdapters: []string{"sql"},
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}, {Revision: "m-2", Tag: "canary"}},
		Revisions: []RevisionConfig{{Name: "m-1"}, {Name: "m-2"}},
	}, {
		Namespace: "default", Name: "other", Model: "o",
		Traffic: []traffic.Target{{Revision: "o-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "o-1"}},
	}}))
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)
	return &modelsHarness{act: act, srv: srv}
}

// pods makes the named pods the ready set of a revision of svc (they are
// never called: /v1/models does no I/O).
func (h *modelsHarness) pods(svc, rev string, names ...string) {
	eps := make([]fleet.Endpoint, 0, len(names))
	for _, n := range names {
		eps = append(eps, fleet.Endpoint{Name: n, Address: "127.0.0.1:1"})
	}
	h.act.SetEndpoints(fleet.Key{Namespace: "default", Service: svc, Revision: rev}, eps)
}

// report sets a pod's latest stats report.
func (h *modelsHarness) report(svc, rev, pod string, at time.Time, cards ...stats.ModelCard) {
	r := h.act.lookupRevision(fleet.Key{Namespace: "default", Service: svc, Revision: rev})
	p := r.pod(pod)
	if p == nil {
		panic("no pod " + pod)
	}
	p.SetStat(&stats.Stat{Pod: pod, Time: at, Ready: true, Engine: stats.EngineStat{Scraped: true, Models: cards}})
}

// rawModel is an entry of /v1/models with every field the activator may send.
type rawModel struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	Created     *int64  `json:"created"`
	OwnedBy     string  `json:"owned_by"`
	Root        *string `json:"root"`
	Parent      *string `json:"parent"`
	MaxModelLen *int    `json:"max_model_len"`
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(body, v), string(body))
	return resp.StatusCode
}

func (h *modelsHarness) list(t *testing.T) map[string]rawModel {
	t.Helper()
	var list struct {
		Object string     `json:"object"`
		Data   []rawModel `json:"data"`
	}
	require.Equal(t, http.StatusOK, getJSON(t, h.srv.URL+PathModels, &list))
	require.Equal(t, "list", list.Object)
	out := map[string]rawModel{}
	var ids []string
	for _, m := range list.Data {
		out[m.ID] = m
		ids = append(ids, m.ID)
	}
	require.Equal(t, []string{"m", "o", "sql"}, ids, "Kvasir's names, sorted, and no other")
	return out
}

func (h *modelsHarness) get(t *testing.T, model string) (rawModel, int) {
	t.Helper()
	var m rawModel
	code := getJSON(t, h.srv.URL+PathModels+"/"+model, &m)
	return m, code
}

func ptr[T any](v T) *T { return &v }

// vLLM's cards for "m" with adapter "sql", as its queue-proxy reports them.
var (
	baseCard    = stats.ModelCard{ID: "m", Root: "/models/llama-3-8b", OwnedBy: "vllm", MaxModelLen: 8192}
	adapterCard = stats.ModelCard{ID: "sql", Root: "/adapters/sql", Parent: "engine-internal-base", OwnedBy: "vllm"}
)

// Without reports, the list is Kvasir's alone, as before.
func TestModelsWithoutEngineCards(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a")
	list := h.list(t)
	assert.Equal(t, rawModel{ID: "m", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir"}, list["m"])
	assert.Equal(t, rawModel{ID: "sql", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir", Parent: ptr("m")}, list["sql"])
}

// The engine's card adds max_model_len and root to Kvasir's entry; id,
// object, created and owned_by stay Kvasir's, and an adapter's parent is
// the name clients use, not the engine's. A card for a name Kvasir does not
// serve changes nothing.
func TestModelsMergeEngineCards(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a")
	h.report("svc", "m-1", "a", time.Now(), baseCard, adapterCard,
		stats.ModelCard{ID: "unrouted", Root: "/models/x", MaxModelLen: 1},
		stats.ModelCard{ID: "o", Root: "/models/wrong-service", MaxModelLen: 2}, // "o" is another service's
	)
	list := h.list(t)
	assert.Equal(t, rawModel{ID: "m", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir",
		Root: ptr("/models/llama-3-8b"), MaxModelLen: ptr(8192)}, list["m"])
	assert.Equal(t, rawModel{ID: "sql", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir",
		Root: ptr("/adapters/sql"), Parent: ptr("m")}, list["sql"])
	assert.Equal(t, rawModel{ID: "o", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir"}, list["o"],
		"a card from another service's pods is not this service's")

	m, code := h.get(t, "m")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, list["m"], m)
	sql, code := h.get(t, "sql")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, list["sql"], sql)
	var e struct{ Error openai.Error }
	require.Equal(t, http.StatusNotFound, getJSON(t, h.srv.URL+PathModels+"/unrouted", &e))
	assert.Equal(t, "model_not_found", e.Error.Code)
}

// Two pods of the revision report different cards: the latest report wins
// (on a tie, the pod whose name sorts first), whichever order they came in.
func TestModelsConflictingCards(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a", "b")
	t0 := time.Now()
	h.report("svc", "m-1", "a", t0, stats.ModelCard{ID: "m", Root: "/a", MaxModelLen: 1000})
	h.report("svc", "m-1", "b", t0.Add(time.Second), stats.ModelCard{ID: "m", Root: "/b", MaxModelLen: 2000})
	m, _ := h.get(t, "m")
	assert.Equal(t, 2000, *m.MaxModelLen)
	assert.Equal(t, "/b", *m.Root)

	h.report("svc", "m-1", "a", t0.Add(2*time.Second), stats.ModelCard{ID: "m", Root: "/a", MaxModelLen: 1000})
	m, _ = h.get(t, "m")
	assert.Equal(t, 1000, *m.MaxModelLen)

	h.report("svc", "m-1", "b", t0.Add(2*time.Second), stats.ModelCard{ID: "m", Root: "/b", MaxModelLen: 2000})
	for range 5 {
		m, _ = h.get(t, "m")
		assert.Equal(t, "/a", *m.Root, "a tie goes to the first pod by name, every time")
	}
	// A pod whose report lacks the name does not hide another's card.
	h.report("svc", "m-1", "a", t0.Add(3*time.Second), stats.ModelCard{ID: "sql", Root: "/adapters/sql"})
	m, _ = h.get(t, "m")
	assert.Equal(t, "/b", *m.Root)
}

// A revision scaled to zero still shows the card its engines last reported;
// new pods' reports replace it.
func TestModelsRememberCardsAtZero(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a")
	h.report("svc", "m-1", "a", time.Now(), baseCard, adapterCard)
	require.Equal(t, 8192, *h.list(t)["m"].MaxModelLen)

	h.pods("svc", "m-1") // scaled to zero
	list := h.list(t)
	require.NotNil(t, list["m"].MaxModelLen)
	assert.Equal(t, 8192, *list["m"].MaxModelLen)
	assert.Equal(t, "/adapters/sql", *list["sql"].Root)

	// Routes rebuilt (any service change) keep what the revision remembers.
	require.NoError(t, h.act.SetServices([]ServiceConfig{{
		Namespace: "default", Name: "svc", Model: "m", LoRAAdapters: []string{"sql"},
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}, {Revision: "m-2", Tag: "canary"}},
		Revisions: []RevisionConfig{{Name: "m-1"}, {Name: "m-2"}},
	}, {
		Namespace: "default", Name: "other", Model: "o",
		Traffic: []traffic.Target{{Revision: "o-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "o-1"}},
	}}))
	assert.Equal(t, 8192, *h.list(t)["m"].MaxModelLen)

	h.pods("svc", "m-1", "c") // scaled up again, with a new engine
	assert.Equal(t, 8192, *h.list(t)["m"].MaxModelLen, "before its first report")
	h.report("svc", "m-1", "c", time.Now(), stats.ModelCard{ID: "m", Root: "/models/llama-3-8b", MaxModelLen: 16384})
	assert.Equal(t, 16384, *h.list(t)["m"].MaxModelLen)
}

// The card is the serving revision's: the largest traffic share; a name@tag
// is the tagged revision's, and an unknown tag is not a model.
func TestModelsServingRevisionAndTags(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a")
	h.pods("svc", "m-2", "b")
	now := time.Now()
	h.report("svc", "m-1", "a", now, stats.ModelCard{ID: "m", MaxModelLen: 1000})
	h.report("svc", "m-2", "b", now.Add(time.Hour), stats.ModelCard{ID: "m", MaxModelLen: 2000},
		stats.ModelCard{ID: "sql", Root: "/adapters/sql-v2"})
	assert.Equal(t, 1000, *h.list(t)["m"].MaxModelLen, "m-2 has no traffic: its later report does not count")
	assert.Nil(t, h.list(t)["sql"].Root, "nor its adapter card")

	m, code := h.get(t, "m@canary")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, rawModel{ID: "m@canary", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir", MaxModelLen: ptr(2000)}, m)
	sql, code := h.get(t, "sql@canary")
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, rawModel{ID: "sql@canary", Object: "model", Created: ptr[int64](0), OwnedBy: "kvasir",
		Root: ptr("/adapters/sql-v2"), Parent: ptr("m")}, sql)
	for _, name := range []string{"m@nope", "o@canary", "x@canary", "m@"} {
		_, code = h.get(t, name)
		assert.Equal(t, http.StatusNotFound, code, name)
	}

}

// In a traffic split the larger share gives the card; the other revision
// fills in a name the first has no card for.
func TestModelsTrafficSplit(t *testing.T) {
	h := newModelsHarness(t)
	require.NoError(t, h.act.SetServices([]ServiceConfig{{
		Namespace: "default", Name: "svc", Model: "m", LoRAAdapters: []string{"sql"},
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 30}, {Revision: "m-2", Percent: 70}},
		Revisions: []RevisionConfig{{Name: "m-1"}, {Name: "m-2"}},
	}, {
		Namespace: "default", Name: "other", Model: "o",
		Traffic: []traffic.Target{{Revision: "o-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "o-1"}},
	}}))
	h.pods("svc", "m-1", "a")
	h.pods("svc", "m-2", "b")
	now := time.Now()
	h.report("svc", "m-1", "a", now.Add(time.Hour), stats.ModelCard{ID: "m", MaxModelLen: 1000},
		stats.ModelCard{ID: "sql", Root: "/adapters/sql-v1"})
	h.report("svc", "m-2", "b", now, stats.ModelCard{ID: "m", MaxModelLen: 2000})
	list := h.list(t)
	assert.Equal(t, 2000, *list["m"].MaxModelLen)
	assert.Equal(t, "/adapters/sql-v1", *list["sql"].Root)
}

// A disaggregated revision's cards come from its decode pool, else its
// prefill pool.
func TestModelsDisaggregatedRevision(t *testing.T) {
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	svc := ServiceConfig{Namespace: "default", Name: "svc", Model: "m", LoRAAdapters: []string{"sql"},
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "m-1", Disaggregated: true}}}
	require.NoError(t, act.SetServices([]ServiceConfig{svc}))
	set := func(role, pod string, cards ...stats.ModelCard) {
		k := svc.RoleKey("m-1", role)
		act.SetEndpoints(k, []fleet.Endpoint{{Name: pod, Address: "127.0.0.1:1"}})
		act.lookupRevision(k).pod(pod).SetStat(&stats.Stat{Pod: pod, Time: time.Now(), Engine: stats.EngineStat{Models: cards}})
	}
	set(fleet.RolePrefill, "p", stats.ModelCard{ID: "m", MaxModelLen: 1000}, stats.ModelCard{ID: "sql", Root: "/adapters/sql"})
	set(fleet.RoleDecode, "d", stats.ModelCard{ID: "m", MaxModelLen: 2000})
	list := act.routes.Load().models()
	require.Len(t, list.Data, 2)
	assert.Equal(t, 2000, list.Data[0].MaxModelLen)
	assert.Equal(t, "/adapters/sql", list.Data[1].Root)
}

// Hostile reports: 10,000 cards in one stat, huge strings, out-of-range
// context lengths. The list stays Kvasir's three names, and small.
func TestModelsHostileReports(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a", "b")
	flood := make([]stats.ModelCard, 0, 10001)
	for i := range 10000 {
		flood = append(flood, stats.ModelCard{ID: fmt.Sprintf("m-%d", i), Root: "/x", MaxModelLen: i + 1})
	}
	flood = append(flood, stats.ModelCard{ID: "m", Root: strings.Repeat("r", 1<<20), MaxModelLen: 4096})
	h.report("svc", "m-1", "a", time.Now().Add(time.Hour), flood...) // the later report, with an oversized card
	h.report("svc", "m-1", "b", time.Now(), stats.ModelCard{ID: "m", Root: "/models/m", MaxModelLen: -7},
		stats.ModelCard{ID: "sql", MaxModelLen: stats.MaxModelLen + 1})

	resp, err := http.Get(h.srv.URL + PathModels)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.Less(t, len(body), 1024, "the list stays small: %.200s", body)
	list := h.list(t)
	assert.Equal(t, "/models/m", *list["m"].Root, "an oversized card is ignored, the other pod's is used")
	assert.Nil(t, list["m"].MaxModelLen, "a context length out of range is left out")
	assert.Nil(t, list["sql"].MaxModelLen)
}

// The official SDK lists and retrieves the models as before, and the
// engine's fields are in the raw JSON.
func TestModelsOpenAISDK(t *testing.T) {
	h := newModelsHarness(t)
	h.pods("svc", "m-1", "a")
	h.report("svc", "m-1", "a", time.Now(), baseCard, adapterCard)
	client := openai.NewClient(option.WithBaseURL(h.srv.URL+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx := context.Background()

	page, err := client.Models.List(ctx)
	require.NoError(t, err)
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
		assert.Equal(t, "kvasir", m.OwnedBy)
	}
	require.Equal(t, []string{"m", "o", "sql"}, ids)
	assert.Contains(t, page.Data[0].RawJSON(), `"max_model_len":8192`)
	assert.Contains(t, page.Data[0].RawJSON(), `"root":"/models/llama-3-8b"`)
	assert.Equal(t, `8192`, page.Data[0].JSON.ExtraFields["max_model_len"].Raw())
	assert.Contains(t, page.Data[2].RawJSON(), `"parent":"m"`)
	assert.NotContains(t, page.Data[2].RawJSON(), `max_model_len`)

	m, err := client.Models.Get(ctx, "m")
	require.NoError(t, err)
	assert.Equal(t, "m", m.ID)
	assert.Contains(t, m.RawJSON(), `"max_model_len":8192`)
	_, err = client.Models.Get(ctx, "unrouted")
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusNotFound, apiErr.StatusCode)
}

// End to end: a simulator (with an adapter) behind a queue-proxy, followed
// over its stats stream. Its max_model_len reaches /v1/models, and stays
// once the replica is gone.
func TestModelsFromQueueProxyStream(t *testing.T) {
	simURL := simtest.Start(t, simtest.Config(func(c *sim.Config) {
		c.Model, c.MaxModelLen = "m", 4096
		c.LoRAModules = []sim.LoRAModule{{Name: "sql", Path: "/adapters/sql"}}
	}))
	var qcfg queueproxy.Config
	fs := flag.NewFlagSet("qp", flag.ContinueOnError)
	qcfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"--engine-url=" + simURL, "--pod-name=r1", "--probe-interval=10ms",
		"--stats-interval=20ms", "--scrape-interval=20ms", "--drain-quiet-period=0s", "--kv-model=false"}))
	qp, err := queueproxy.New(qcfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = qp.Run(ctx) }()
	qpAddr, err := qp.Start("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { cancel(); <-done; _ = qp.Close() })

	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	svc := ServiceConfig{Namespace: "default", Name: "svc", Model: "m", LoRAAdapters: []string{"sql"},
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "m-1"}}}
	require.NoError(t, act.SetServices([]ServiceConfig{svc}))
	act.SetEndpoints(svc.Key("m-1"), []fleet.Endpoint{{Name: "r1", Address: qpAddr}})
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)
	client := openai.NewClient(option.WithBaseURL(srv.URL+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))

	var page []openai.Model
	require.Eventually(t, func() bool {
		p, err := client.Models.List(context.Background())
		if err != nil || len(p.Data) != 2 {
			return false
		}
		page = p.Data
		return strings.Contains(p.Data[0].RawJSON(), `"max_model_len":4096`) && strings.Contains(p.Data[1].RawJSON(), `"root"`)
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, "m", page[0].ID)
	assert.Equal(t, "kvasir", page[0].OwnedBy)
	assert.Equal(t, "sql", page[1].ID)
	assert.Contains(t, page[1].RawJSON(), `"root":"/adapters/sql"`)
	assert.Contains(t, page[1].RawJSON(), `"parent":"m"`)

	act.SetEndpoints(svc.Key("m-1"), nil) // scaled to zero
	p, err := client.Models.List(context.Background())
	require.NoError(t, err)
	assert.Contains(t, p.Data[0].RawJSON(), `"max_model_len":4096`)
}
