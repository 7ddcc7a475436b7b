package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

const blockSize = 16

type pool struct {
	env  *Env
	pods []*Pod
}

func newPool(t testing.TB, n int) *pool {
	t.Helper()
	p := &pool{env: &Env{Index: kvindex.New(slog.New(slog.DiscardHandler)), Log: slog.New(slog.DiscardHandler)}}
	for i := range n {
		pod := NewPod(fleet.Endpoint{Name: fmt.Sprintf("pod-%02d", i), Address: fmt.Sprintf("127.0.0.1:%d", 9000+i)})
		pod.Slot = p.env.Index.AddPod(pod.Name)
		p.env.Index.Apply(stats.KVEvent{Pod: pod.Name, BlockSize: blockSize, Seq: 1, Reset: true})
		p.pods = append(p.pods, pod)
	}
	return p
}

func (p *pool) profile(t testing.TB, plugins ...v1alpha1.RoutingPlugin) *Profile {
	t.Helper()
	prof, err := DefaultRegistry().Build(plugins, p.env)
	require.NoError(t, err)
	return prof
}

func chatRequest(t testing.TB, system, user string) *Request {
	t.Helper()
	body := fmt.Sprintf(`{"model":"m","messages":[{"role":"system","content":%q},{"role":"user","content":%q}]}`, system, user)
	obj, err := openai.Parse([]byte(body))
	require.NoError(t, err)
	return &Request{Body: obj, API: APIChat}
}

func plugin(name string, weight int) v1alpha1.RoutingPlugin {
	return v1alpha1.RoutingPlugin{Name: name, Weight: weight}
}

func TestBuildValidatesNamesAndConfig(t *testing.T) {
	reg := DefaultRegistry()
	require.NoError(t, reg.Validate(nil), "the default profile builds")
	err := reg.Validate([]v1alpha1.RoutingPlugin{plugin(LeastRequest, 1), plugin("magic", 1)})
	require.ErrorContains(t, err, `plugins[1].name: unknown plugin "magic"`)

	withConfig := func(name, cfg string) v1alpha1.RoutingPlugin {
		return v1alpha1.RoutingPlugin{Name: name, Config: &runtime.RawExtension{Raw: []byte(cfg)}}
	}
	err = reg.Validate([]v1alpha1.RoutingPlugin{withConfig(KVCacheAware, `{"speculativeTTL":"-1s"}`)})
	require.ErrorContains(t, err, "plugins[0].config: speculativeTTL: must be > 0")
	err = reg.Validate([]v1alpha1.RoutingPlugin{withConfig(PrefixCache, `{"blockSize":16,"typo":1}`)})
	require.ErrorContains(t, err, `plugins[0].config: invalid config: json: unknown field "typo"`)
	err = reg.Validate([]v1alpha1.RoutingPlugin{withConfig(PrefixCache, `{"maxBlocks":0}`)})
	require.ErrorContains(t, err, "plugins[0].config: maxBlocks: must be >= 1")
	err = reg.Validate([]v1alpha1.RoutingPlugin{withConfig(KVCacheAware, `{"evictedAffinity":1.5}`)})
	require.ErrorContains(t, err, "plugins[0].config: evictedAffinity: must be within [0, 1], got 1.5")
	require.NoError(t, reg.Validate([]v1alpha1.RoutingPlugin{withConfig(KVCacheAware, `{"speculativeTTL":"500ms","balanceSlack":4,"evictedAffinity":0.5}`)}))
}

func TestLeastRequestCountsEngineQueue(t *testing.T) {
	p := newPool(t, 3)
	prof := p.profile(t, plugin(LeastRequest, 1))
	p.pods[0].InFlight, p.pods[1].InFlight, p.pods[2].InFlight = 2, 1, 1
	p.pods[1].SetStat(&stats.Stat{Engine: stats.EngineStat{Scraped: true, Waiting: 5}})
	for range 10 {
		require.Equal(t, "pod-02", prof.Pick(chatRequest(t, "s", "u"), p.pods).Name)
	}
}

func TestRoundRobinCycles(t *testing.T) {
	p := newPool(t, 3)
	prof := p.profile(t, plugin(RoundRobin, 1))
	var got []string
	for range 6 {
		got = append(got, prof.Pick(chatRequest(t, "s", "u"), p.pods).Name)
	}
	require.Equal(t, []string{"pod-00", "pod-01", "pod-02", "pod-00", "pod-01", "pod-02"}, got)
}

func TestKVCacheAwareFollowsTheIndex(t *testing.T) {
	p := newPool(t, 3)
	prof := p.profile(t, plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
	sys := strings.Repeat("You are a helpful assistant. ", 200)
	req := chatRequest(t, sys, "question one")
	text, err := req.Text()
	require.NoError(t, err)
	held := prompt.BlockHashes(text, blockSize)
	require.Greater(t, len(held), 20)
	// pod-01's queue-proxy reports the system prompt's blocks.
	require.True(t, p.env.Index.Apply(stats.KVEvent{Pod: "pod-01", BlockSize: blockSize, Seq: 2, Added: held[:len(held)-2]}))
	p.pods[1].InFlight = 3 // busier, but within the slack
	require.Equal(t, "pod-01", prof.Pick(chatRequest(t, sys, "question two"), p.pods).Name)
}

// A new prefix's second request goes where the first went, before any
// report: the decision left a speculative entry.
func TestSpeculationKeepsABurstTogether(t *testing.T) {
	p := newPool(t, 4)
	prof := p.profile(t, plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
	sys := strings.Repeat("A brand new system prompt. ", 100)
	first := prof.Pick(chatRequest(t, sys, "q1"), p.pods)
	first.InFlight++
	second := prof.Pick(chatRequest(t, sys, "q2"), p.pods)
	require.Equal(t, first.Name, second.Name)
}

// With one pod to choose from, the pick leaves no speculation (that pod's
// own KV events tell the index): a second pod added right after finds the
// prefix nowhere; with two pods the same pick speculates.
func TestSpeculationOnlyWithAChoice(t *testing.T) {
	sys := strings.Repeat("Speculated or not. ", 100)
	text, err := chatRequest(t, sys, "").Text()
	require.NoError(t, err)
	held := func(p *pool) int {
		var matched [kvindex.MaxPods]int
		p.env.Index.Match(prompt.BlockHashes(text, blockSize), &matched)
		return slices.Max(matched[:])
	}
	one := newPool(t, 2)
	prof := one.profile(t, plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
	prof.Pick(chatRequest(t, sys, "q1"), one.pods[:1])
	require.Zero(t, held(one), "one candidate: no speculation")

	two := newPool(t, 2)
	prof = two.profile(t, plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
	prof.Pick(chatRequest(t, sys, "q1"), two.pods)
	require.Positive(t, held(two), "two candidates: the pick is speculated")
}

// One hot prefix held by one pod does not pile every request onto it: once
// that pod is busier than the allowance (32 + 2x the least-loaded pod's
// load), the others get requests too (and learn the prefix), and the spread
// stays bounded. A router-local prefix table with least-request, as peers
// ship it, puts them all on one pod.
func TestKVCacheAwareBalancesAHotPrefix(t *testing.T) {
	sys := strings.Repeat("The one hot system prompt. ", 300)
	run := func(plugins ...v1alpha1.RoutingPlugin) []int {
		p := newPool(t, 3)
		text, _ := chatRequest(t, sys, "").Text()
		p.env.Index.Apply(stats.KVEvent{Pod: "pod-00", BlockSize: blockSize, Seq: 2, Added: prompt.BlockHashes(text, blockSize)})
		prof := p.profile(t, plugins...)
		for i := range 300 {
			pod := prof.Pick(chatRequest(t, sys, fmt.Sprintf("question %d", i)), p.pods)
			pod.InFlight++ // none finishes: the worst case for piling up
		}
		loads := []int{p.pods[0].InFlight, p.pods[1].InFlight, p.pods[2].InFlight}
		sort.Ints(loads)
		return loads
	}
	loads := run(plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
	require.GreaterOrEqual(t, loads[0], 40, "every pod serves the hot prefix: %v", loads)
	require.LessOrEqual(t, loads[2], 3*loads[0]+32+1, "spread within the allowance: %v", loads)

	piled := run(plugin(PrefixCache, 3), plugin(LeastRequest, 2))
	require.GreaterOrEqual(t, piled[2], 298, "a prefix table without load coupling piles up: %v", piled)
}

func TestPrefixCacheRemembersItsOwnDecisions(t *testing.T) {
	p := newPool(t, 3)
	prof := p.profile(t, plugin(PrefixCache, 3), plugin(LeastRequest, 2))
	sys := strings.Repeat("Router-local table. ", 100)
	first := prof.Pick(chatRequest(t, sys, "q1"), p.pods)
	for range 5 {
		require.Equal(t, first.Name, prof.Pick(chatRequest(t, sys, "another question"), p.pods).Name)
	}
}

func TestLoRAAffinity(t *testing.T) {
	p := newPool(t, 3)
	prof := p.profile(t, plugin(LoRAAffinity, 1))
	p.pods[2].SetStat(&stats.Stat{Engine: stats.EngineStat{Scraped: true, LoRAAdapters: []string{"sql"}}})
	req := chatRequest(t, "s", "u")
	req.Adapter = "sql"
	for range 5 {
		require.Equal(t, "pod-02", prof.Pick(req, p.pods).Name)
	}
	// An adapter loaded at run time shows in the engine's model list.
	p.pods[2].SetStat(&stats.Stat{Engine: stats.EngineStat{Scraped: true}})
	p.pods[1].SetStat(&stats.Stat{Engine: stats.EngineStat{Scraped: true,
		Models: []stats.ModelCard{{ID: "m"}, {ID: "sql", Parent: "m"}}}})
	for range 5 {
		require.Equal(t, "pod-01", prof.Pick(req, p.pods).Name)
	}
}

// BenchmarkDecision8kTokens64Pods measures one decision of the default
// profile (kv-cache-aware + least-request) for an 8,000-token chat prompt
// over 64 pods that hold prefixes of it: rendering, hashing, index lookup,
// scoring and the speculative entry. It reports p99.
func BenchmarkDecision8kTokens64Pods(b *testing.B) {
	p := newPool(b, kvindex.MaxPods)
	prof := p.profile(b, DefaultPlugins()...)
	sys := strings.Repeat("You are a helpful assistant.\nAnswer briefly. ", 640) // ~7,700 tokens
	text, _ := chatRequest(b, sys, "q").Text()
	held := prompt.BlockHashes(text, blockSize)
	for i, pod := range p.pods {
		pod.InFlight = i % 7
		p.env.Index.Apply(stats.KVEvent{Pod: pod.Name, BlockSize: blockSize, Seq: 2, Added: held[:len(held)*(i+1)/len(p.pods)]})
	}
	bodies := make([][]byte, 256)
	for i := range bodies {
		bodies[i] = fmt.Appendf(nil, `{"model":"m","messages":[{"role":"system","content":%q},{"role":"user","content":"question %d: %s"}]}`,
			sys, i, strings.Repeat("more words ", 30))
	}
	var durs []time.Duration
	b.ResetTimer()
	i := 0
	for b.Loop() {
		obj, _ := openai.Parse(bodies[i%len(bodies)]) // the activator's one parse, not part of the decision
		req := &Request{Body: obj, API: APIChat}
		start := time.Now()
		prof.Pick(req, p.pods)
		durs = append(durs, time.Since(start))
		req.Release()
		i++
	}
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)*99/100].Microseconds()), "p99-us")
	b.ReportMetric(float64(durs[len(durs)/2].Microseconds()), "p50-us")
}

// Under cache pressure a prefix that no pod holds any more goes back to the
// pod that held it last, even when that pod is busier, so the pods keep
// dividing the prefixes between them (evictedAffinity); a pod that holds the
// prefix now wins, and 0 turns the memory off.
func TestKVCacheAwareReturnsAnEvictedPrefixToItsFormerPod(t *testing.T) {
	sys := strings.Repeat("A prefix under cache pressure. ", 100)
	setup := func(t *testing.T, plugins ...v1alpha1.RoutingPlugin) (*pool, *Profile, []uint64) {
		p := newPool(t, 3)
		text, err := chatRequest(t, sys, "").Text()
		require.NoError(t, err)
		hs := prompt.BlockHashes(text, blockSize)
		require.True(t, p.env.Index.Apply(stats.KVEvent{Pod: "pod-02", BlockSize: blockSize, Seq: 2, Added: hs}))
		require.True(t, p.env.Index.Apply(stats.KVEvent{Pod: "pod-02", BlockSize: blockSize, Seq: 3, Removed: hs}))
		p.pods[2].InFlight = 4 // busier than the others, within the allowance
		return p, p.profile(t, plugins...), hs
	}
	t.Run("former holder", func(t *testing.T) {
		p, prof, _ := setup(t, plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
		require.Equal(t, "pod-02", prof.Pick(chatRequest(t, sys, "q"), p.pods).Name)
	})
	t.Run("current holder wins", func(t *testing.T) {
		p, prof, hs := setup(t, plugin(KVCacheAware, 3), plugin(LeastRequest, 2))
		require.True(t, p.env.Index.Apply(stats.KVEvent{Pod: "pod-01", BlockSize: blockSize, Seq: 2, Added: hs}))
		require.Equal(t, "pod-01", prof.Pick(chatRequest(t, sys, "q"), p.pods).Name)
	})
	t.Run("off", func(t *testing.T) {
		p, prof, _ := setup(t, v1alpha1.RoutingPlugin{Name: KVCacheAware, Weight: 3,
			Config: &runtime.RawExtension{Raw: []byte(`{"evictedAffinity":0}`)}}, plugin(LeastRequest, 2))
		require.NotEqual(t, "pod-02", prof.Pick(chatRequest(t, sys, "q"), p.pods).Name, "least-request decides")
	})
}

// The oracle asks the pods in PreScore, before the decision: Pick itself
// asks none, a prepared Pick goes where an engine holds the prompt, and a
// pod left out of PreScore's snapshot scores as one that did not answer.
func TestOracleAsksThePodsBeforeTheDecision(t *testing.T) {
	var asked atomic.Int32
	p := newPool(t, 3)
	for i, cached := range []int{0, 90, 10} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked.Add(1)
			if r.URL.Path != OraclePath {
				http.NotFound(w, r)
				return
			}
			fmt.Fprintf(w, `{"prompt_tokens":100,"cached_tokens":%d}`, cached)
		}))
		t.Cleanup(srv.Close)
		p.pods[i].Address = strings.TrimPrefix(srv.URL, "http://")
	}
	prof := p.profile(t, plugin(Oracle, 1))
	require.True(t, prof.Prepares())

	req := chatRequest(t, "s", "first question")
	prepared := prof.PreScore(context.Background(), req, p.pods)
	require.EqualValues(t, 3, asked.Load())
	require.Equal(t, "pod-01", prof.PickPrepared(req, prepared, p.pods).Name)
	require.EqualValues(t, 3, asked.Load(), "the decision asked a pod")

	req = chatRequest(t, "s", "second question")
	prepared = prof.PreScore(context.Background(), req, []*Pod{p.pods[0], p.pods[2]})
	require.Equal(t, "pod-02", prof.PickPrepared(req, prepared, p.pods).Name, "pod-01 was not asked")
	require.EqualValues(t, 5, asked.Load())
}

// A profile without preparers has nothing to do before the decision.
func TestPreScoreWithoutPreparers(t *testing.T) {
	p := newPool(t, 2)
	prof := p.profile(t, DefaultPlugins()...)
	require.False(t, prof.Prepares())
	req := chatRequest(t, "s", "u")
	require.Nil(t, prof.PreScore(context.Background(), req, p.pods))
	require.NotNil(t, prof.PickPrepared(req, nil, p.pods))
}
