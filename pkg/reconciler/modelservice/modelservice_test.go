package modelservice

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

const wait, tick = 30 * time.Second, 20 * time.Millisecond

func start(t *testing.T) client.Client {
	t.Helper()
	cfg := kubetest.Start(t)
	t.Cleanup(runController(t, cfg))
	return kubetest.Client(t, cfg)
}

// runController runs the reconciler until the returned func is called.
func runController(t *testing.T, cfg *rest.Config) func() {
	return kubetest.Manager(t, cfg, func(mgr ctrl.Manager) error {
		return (&Reconciler{Client: mgr.GetClient(), Events: mgr.GetEventRecorder("kvasir-controller"),
			BaseURL: "http://activator.kvasir-serving.svc.cluster.local/v1"}).SetupWithManager(mgr)
	})
}

func pct(n int64) *int64 { return &n }
func yes() *bool         { b := true; return &b }

// createLlama creates the ModelService "llama" on the simulator, with the
// defaults.
func createLlama(t *testing.T, c client.Client) {
	t.Helper()
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	require.NoError(t, c.Create(context.Background(), ms))
}

func get(t *testing.T, c client.Client, name string) *v1alpha1.ModelService {
	ms := &v1alpha1.ModelService{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, ms))
	return ms
}

// markReady plays the revision reconciler: the revision has a ready replica.
func markReady(t *testing.T, c client.Client, name string) {
	t.Helper()
	require.Eventually(t, func() bool {
		rev := &v1alpha1.ModelRevision{}
		if c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, rev) != nil {
			return false
		}
		rev.Status.InitializeConditions()
		rev.Status.ObservedGeneration = rev.Generation
		rev.Status.MarkResourcesAvailable()
		rev.Status.MarkContainerHealthy()
		rev.Status.MarkActive()
		return c.Status().Update(context.Background(), rev) == nil
	}, wait, tick)
}

func summary(ms *v1alpha1.ModelService) string { return ms.Status.TrafficSummary }

// routing returns the routing states of two revisions, "a b".
func routing(c client.Client, a, b string) string {
	var out []string
	for _, name := range []string{a, b} {
		rev := &v1alpha1.ModelRevision{}
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, rev); err != nil {
			return err.Error()
		}
		out = append(out, rev.Labels[v1alpha1.LabelRoutingState])
	}
	return strings.Join(out, " ")
}

func TestRolloutCanaryPromotionRollback(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	createLlama(t, c)

	markReady(t, c, "llama-00001")
	require.Eventually(t, func() bool {
		got := get(t, c, "llama")
		return got.IsReady() && summary(got) == "llama-00001=100%" && got.Status.LatestReadyRevisionName == "llama-00001"
	}, wait, tick, "status: %+v", func() any { return get(t, c, "llama").Status }())
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001"}, rev))
	require.True(t, metav1.IsControlledBy(rev, get(t, c, "llama")), "deleting the service deletes its revisions (owner reference)")

	// A template change with a 90/10 canary split.
	cur := get(t, c, "llama")
	cur.Spec.Template.Engine.Args = []string{"--default-max-tokens=32"}
	cur.Spec.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00001", Percent: pct(90)},
		{LatestRevision: yes(), Percent: pct(10), Tag: "canary"}}
	require.NoError(t, c.Update(ctx, cur))
	require.Eventually(t, func() bool {
		got := get(t, c, "llama")
		return got.Status.LatestCreatedRevisionName == "llama-00002" && summary(got) == "llama-00001=90%, llama-00001=10%@canary"
	}, wait, tick, "before the new revision is ready, latestRevision still means the old one")
	markReady(t, c, "llama-00002")
	require.Eventually(t, func() bool {
		got := get(t, c, "llama")
		return summary(got) == "llama-00001=90%, llama-00002=10%@canary" && got.IsReady()
	}, wait, tick)
	got := get(t, c, "llama")
	require.Equal(t, "http://activator.kvasir-serving.svc.cluster.local/v1/models/llama@canary", got.Status.Traffic[1].URL)

	// Promotion, then rollback.
	got.Spec.Traffic = []v1alpha1.TrafficTarget{{LatestRevision: yes(), Percent: pct(100)}}
	require.NoError(t, c.Update(ctx, got))
	require.Eventually(t, func() bool { return summary(get(t, c, "llama")) == "llama-00002=100%" }, wait, tick)
	require.Eventually(t, func() bool { return routing(c, "llama-00001", "llama-00002") == "reserve active" }, wait, tick,
		"a revision no traffic names is marked for scale to zero")
	got = get(t, c, "llama")
	got.Spec.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00001", Percent: pct(100)}}
	require.NoError(t, c.Update(ctx, got))
	require.Eventually(t, func() bool { return summary(get(t, c, "llama")) == "llama-00001=100%" }, wait, tick)
	require.Eventually(t, func() bool { return routing(c, "llama-00001", "llama-00002") == "active reserve" }, wait, tick)

	// An unknown revision is reported with its field.
	got = get(t, c, "llama")
	got.Spec.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00009", Percent: pct(100)}}
	require.NoError(t, c.Update(ctx, got))
	require.Eventually(t, func() bool {
		cond := get(t, c, "llama").Status.GetCondition(v1alpha1.ModelServiceConditionTrafficReady)
		return cond != nil && cond.IsFalse() && cond.Message == `spec.traffic[0].revisionName: unknown revision "llama-00009"`
	}, wait, tick)
	require.Equal(t, "active reserve", routing(c, "llama-00001", "llama-00002"),
		"a mistake in spec.traffic scales nothing down: the last good routing stands")
}

// The API server rejects invalid objects, naming the field.
func TestInvalidObjectsRejected(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		traffic []v1alpha1.TrafficTarget
		want    string
	}{
		"percents": {[]v1alpha1.TrafficTarget{{LatestRevision: yes(), Percent: pct(50)}}, "spec.traffic"},
		"tags": {[]v1alpha1.TrafficTarget{{LatestRevision: yes(), Percent: pct(50), Tag: "a"},
			{RevisionName: "x-00001", Percent: pct(50), Tag: "a"}}, "spec.traffic"},
	} {
		t.Run(name, func(t *testing.T) {
			ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "bad-" + name, Namespace: "default"}}
			ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
			ms.Spec.Traffic = tc.traffic
			err := c.Create(ctx, ms)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// Engine fields the API server refuses: a tokenizer file (kvasir local
// only) and adapter names that would read as engine flags.
func TestEngineFieldsRejected(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	for name, mutate := range map[string]func(*v1alpha1.ModelService){
		"tokenizer-file": func(ms *v1alpha1.ModelService) {
			ms.Spec.Template.Engine.Tokenizer = &v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerFile, Path: "/etc/passwd"}
		},
		"adapter-flag":   func(ms *v1alpha1.ModelService) { ms.Spec.LoRAAdapters = []string{"--api-key"} },
		"adapter-equals": func(ms *v1alpha1.ModelService) { ms.Spec.LoRAAdapters = []string{"a=b"} },
		"health-path":    func(ms *v1alpha1.ModelService) { ms.Spec.Template.Engine.HealthPath = "health" },
		"kv-endpoint": func(ms *v1alpha1.ModelService) {
			ms.Spec.Template.Engine.KVEvents = &v1alpha1.KVEventsSpec{Endpoint: "ipc:///x"}
		},
	} {
		t.Run(name, func(t *testing.T) {
			ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "bad-" + name, Namespace: "default"}}
			ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
			mutate(ms)
			require.Error(t, c.Create(ctx, ms))
		})
	}
}

// The controller stops in the middle of a rollout (the template and the
// traffic changed while it was down); a new one converges.
func TestControllerRestartMidRolloutConverges(t *testing.T) {
	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()
	stop := runController(t, cfg)
	createLlama(t, c)
	markReady(t, c, "llama-00001")
	require.Eventually(t, func() bool { return summary(get(t, c, "llama")) == "llama-00001=100%" }, wait, tick)
	stop()

	cur := get(t, c, "llama")
	cur.Spec.Template.Engine.Args = []string{"--default-max-tokens=32"}
	cur.Spec.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00001", Percent: pct(50)},
		{LatestRevision: yes(), Percent: pct(50), Tag: "next"}}
	require.NoError(t, c.Update(ctx, cur))

	t.Cleanup(runController(t, cfg))
	markReady(t, c, "llama-00002")
	require.Eventually(t, func() bool {
		got := get(t, c, "llama")
		return got.IsReady() && summary(got) == "llama-00001=50%, llama-00002=50%@next" &&
			got.Status.ObservedGeneration == got.Generation
	}, wait, tick)
	list := &v1alpha1.ModelRevisionList{}
	require.NoError(t, c.List(ctx, list, client.InNamespace("default")))
	require.Len(t, list.Items, 2, "exactly one new revision, however many reconciles ran")
}

// Old unreferenced revisions beyond the newest two are deleted; what
// traffic names and the latest created stay.
func TestOldRevisionsCollected(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	ms.Spec.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00001", Percent: pct(100)}}
	require.NoError(t, c.Create(ctx, ms))
	for gen := 2; gen <= 5; gen++ {
		require.Eventually(t, func() bool {
			return get(t, c, "llama").Status.LatestCreatedRevisionName == v1alpha1.RevisionName("llama", gen-1)
		}, wait, tick)
		cur := get(t, c, "llama")
		cur.Spec.Template.Engine.Args = []string{"--seed=" + string(rune('0'+gen))}
		require.NoError(t, c.Update(ctx, cur))
	}
	names := func() []string {
		list := &v1alpha1.ModelRevisionList{}
		require.NoError(t, c.List(ctx, list, client.InNamespace("default")))
		var out []string
		for _, r := range list.Items {
			out = append(out, r.Name)
		}
		return out
	}
	require.Eventually(t, func() bool {
		n := names()
		return len(n) == 4 && !slices.Contains(n, "llama-00002")
	}, wait, tick, "revisions: %v", names())
	require.ElementsMatch(t, []string{"llama-00001", "llama-00003", "llama-00004", "llama-00005"}, names())
}

// A new revision's serving role starts at its initial scale, raised to its
// minScale.
func TestRevisionStartsAtInitialScale(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	three, one := int32(3), int32(1)
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: &three, MaxScale: &three, InitialScale: &one}
	require.NoError(t, c.Create(ctx, ms))
	rev := &v1alpha1.ModelRevision{}
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "big-00001"}, rev) == nil
	}, wait, tick)
	require.Equal(t, int32(3), *rev.Spec.Replicas)
}

// The latest ready revision only moves forward: when it is not ready for a
// while (a replica replaced, waking from zero), traffic that follows the
// latest revision stays with it instead of going back to an older one.
func TestLatestReadyOnlyMovesForward(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	createLlama(t, c)
	markReady(t, c, "llama-00001")
	require.Eventually(t, func() bool { return get(t, c, "llama").Status.LatestReadyRevisionName == "llama-00001" }, wait, tick)
	cur := get(t, c, "llama")
	cur.Spec.Template.Engine.Args = []string{"--default-max-tokens=32"}
	require.NoError(t, c.Update(ctx, cur))
	markReady(t, c, "llama-00002")
	require.Eventually(t, func() bool { return summary(get(t, c, "llama")) == "llama-00002=100%" }, wait, tick)

	require.Eventually(t, func() bool {
		rev := &v1alpha1.ModelRevision{}
		if c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00002"}, rev) != nil {
			return false
		}
		rev.Status.MarkContainerUnhealthy("EngineFailed", "the engine exited")
		return c.Status().Update(ctx, rev) == nil
	}, wait, tick)
	require.Eventually(t, func() bool {
		got := get(t, c, "llama")
		return !got.IsReady() && got.Status.LatestReadyRevisionName == "llama-00002" && summary(got) == "llama-00002=100%"
	}, wait, tick, "the service is not ready, and its traffic stays on llama-00002: %+v", func() any { return get(t, c, "llama").Status })
}

// Adapters added to or removed from spec.loraAdapters make no revision:
// they go to the service's ConfigMap, which the queue-proxies follow. Only
// turning LoRA on (from no adapters) makes one, as the engines must start
// with LoRA enabled.
func TestLoRAAdaptersChangeNoRevision(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "lora", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	require.NoError(t, c.Create(ctx, ms))
	adapters := func() string {
		cm := &corev1.ConfigMap{}
		if c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "lora-lora-adapters"}, cm) != nil {
			return "<none>"
		}
		return cm.Data["lora-adapters.json"]
	}
	revisions := func() []string {
		list := &v1alpha1.ModelRevisionList{}
		require.NoError(t, c.List(ctx, list, client.InNamespace("default"), client.MatchingLabels{v1alpha1.LabelService: "lora"}))
		var names []string
		for _, r := range list.Items {
			names = append(names, r.Name)
		}
		slices.Sort(names)
		return names
	}
	setAdapters := func(names ...string) {
		require.Eventually(t, func() bool {
			ms := get(t, c, "lora")
			ms.Spec.LoRAAdapters = names
			return c.Update(ctx, ms) == nil
		}, wait, tick)
	}
	require.Eventually(t, func() bool { return slices.Equal(revisions(), []string{"lora-00001"}) }, wait, tick)
	require.Equal(t, "<none>", adapters(), "no ConfigMap for a service that never had adapters")

	setAdapters("sql")
	require.Eventually(t, func() bool { return adapters() == `{"loraAdapters":["sql"]}` }, wait, tick)
	require.Eventually(t, func() bool { return len(revisions()) == 2 }, wait, tick, "turning LoRA on makes a revision")

	setAdapters("sql", "chat")
	require.Eventually(t, func() bool { return adapters() == `{"loraAdapters":["sql","chat"]}` }, wait, tick)
	setAdapters("chat")
	require.Eventually(t, func() bool { return adapters() == `{"loraAdapters":["chat"]}` }, wait, tick)
	require.Equal(t, []string{"lora-00001", "lora-00002"}, revisions(), "changing which adapters makes no revision")
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "lora-00002"}, rev))
	require.Equal(t, []string{"sql"}, rev.Spec.LoRAAdapters, "a revision keeps the adapters its engines start with")

	// A ConfigMap deleted by hand comes back.
	require.NoError(t, c.Delete(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "lora-lora-adapters"}}))
	require.Eventually(t, func() bool { return adapters() == `{"loraAdapters":["chat"]}` }, wait, tick)
}
