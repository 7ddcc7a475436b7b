package kube

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// The life of a ModelService on a cluster whose Deployments, ReplicaSets,
// EndpointSlices and garbage collection are Kubernetes' own
// (kube-controller-manager) and whose pods run for real on loopback: it
// serves the official OpenAI client, rolls out a canary with a tag, is
// promoted and rolled back (the revision without traffic at zero), shows
// in kubectl, and deleting it removes everything it made.
func TestRolloutOnACluster(t *testing.T) {
	k := startKvasir(t)
	c, ctx := k.c, t.Context()
	kubectl := func(args ...string) string { t.Helper(); return k.kubectl(t, args...) }
	// servedBy asks for model (a name or name@tag) and returns the
	// revision that answered, or what went wrong. Every request must
	// succeed: errs counts those that did not (checked at the end, as
	// servedBy also runs inside Eventually's goroutine).
	var errs atomic.Int32
	servedBy := func(model string) string {
		var resp *http.Response
		out, err := k.sdk.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model, MaxTokens: openai.Int(4),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}}, option.WithResponseInto(&resp))
		if err != nil || len(out.Choices) == 0 {
			errs.Add(1)
			t.Logf("request for %s failed: %v", model, err)
			return fmt.Sprintf("error: %v", err)
		}
		return resp.Header.Get("X-Kvasir-Revision")
	}
	defer func() { require.Zero(t, errs.Load(), "requests failed") }()
	msReady := func(latest string) func() bool {
		return func() bool {
			ms := &v1alpha1.ModelService{}
			return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "demo"}, ms) == nil &&
				ms.Status.ObservedGeneration == ms.Generation && ms.Status.IsReady() &&
				ms.Status.LatestReadyRevisionName == latest
		}
	}

	// Create: one revision, one pod, served.
	one := int32(1)
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Args: []string{"--zero-latency"}}
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: &one}
	require.NoError(t, c.Create(ctx, ms))
	require.Eventually(t, msReady("demo-00001"), wait, tick, "the first revision becomes ready")
	require.Eventually(t, func() bool { return k.kl.Running() == 1 }, wait, tick)
	// The activator's informers follow the API server a moment behind it.
	require.Eventually(t, func() bool { _, ok := k.act.PickRevision("demo", ""); return ok }, wait, tick)
	require.Equal(t, "demo-00001", servedBy("demo"))
	k.checkRevisionPods(t, "demo-00001", 8000)

	// Canary: a template edit makes demo-00002, which takes 10% and the
	// tag; demo-00001 keeps 90%.
	require.NoError(t, update(ctx, c, "demo", func(ms *v1alpha1.ModelService) {
		ms.Spec.Template.Engine.Args = []string{"--zero-latency", "--default-max-tokens=32"}
		ms.Spec.Traffic = []v1alpha1.TrafficTarget{
			{RevisionName: "demo-00001", Percent: ptr.To[int64](90)},
			{LatestRevision: ptr.To(true), Percent: ptr.To[int64](10), Tag: "canary"},
		}
	}))
	require.Eventually(t, msReady("demo-00002"), wait, tick, "the canary becomes ready")
	require.Eventually(t, func() bool { rev, ok := k.act.PickRevision("demo", "canary"); return ok && rev == "demo-00002" }, wait, tick)
	require.Eventually(t, func() bool { return servedBy("demo@canary") == "demo-00002" }, wait, tick,
		"the activator routes the tag once its pod is in the EndpointSlice")
	got := kubectl("get", "msvc", "demo")
	require.Contains(t, got, "demo-00001=90%, demo-00002=10%@canary")
	require.Contains(t, got, "http://activator/v1")
	got = kubectl("get", "mrev")
	require.Regexp(t, `demo-00001\s+demo\s+1\s+True\s+1\s+1`, got)
	require.Regexp(t, `demo-00002\s+demo\s+2\s+True\s+1\s+1`, got)
	kubectl("get", "deployments,replicasets,pods,endpointslices")

	// Promotion: all to the latest.
	require.NoError(t, update(ctx, c, "demo", func(ms *v1alpha1.ModelService) {
		ms.Spec.Traffic = []v1alpha1.TrafficTarget{{LatestRevision: ptr.To(true), Percent: ptr.To[int64](100)}}
	}))
	require.Eventually(t, func() bool {
		ms := &v1alpha1.ModelService{}
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "demo"}, ms) == nil &&
			ms.Status.ObservedGeneration == ms.Generation && ms.Status.TrafficSummary == "demo-00002=100%"
	}, wait, tick)
	require.Eventually(t, func() bool { return servedBy("demo") == "demo-00002" }, wait, tick)
	// demo-00001 takes no traffic now: kept for rollback, at zero.
	require.Eventually(t, func() bool {
		return deploymentReplicas(c, "demo-00001-deployment") == 0 && k.kl.Running() == 1
	}, wait, tick, "the unreferenced revision scales to zero despite its minScale")
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "demo-00001"}, rev))
	require.Equal(t, v1alpha1.RoutingStateReserve, rev.Labels[v1alpha1.LabelRoutingState])
	kubectl("get", "msvc")
	kubectl("get", "mrev")

	// Rollback: demo-00001 takes all traffic again; the first request
	// waits in the activator while it scales from zero; demo-00002 goes to
	// zero.
	require.NoError(t, update(ctx, c, "demo", func(ms *v1alpha1.ModelService) {
		ms.Spec.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "demo-00001", Percent: ptr.To[int64](100)}}
	}))
	require.Eventually(t, func() bool { return servedBy("demo") == "demo-00001" }, wait, tick)
	require.Eventually(t, func() bool {
		return deploymentReplicas(c, "demo-00002-deployment") == 0 && deploymentReplicas(c, "demo-00001-deployment") == 1 &&
			k.kl.Running() == 1
	}, wait, tick, "the rolled-back-from revision scales to zero")
	kubectl("describe", "mrev", "demo-00001")

	// Deletion, as kubectl does it: the garbage collector removes the
	// revisions and, through them, everything else; the pods stop.
	kubectl("delete", "msvc", "demo")
	require.Eventually(t, func() bool {
		return count(ctx, c, &v1alpha1.ModelRevisionList{}) == 0 && count(ctx, c, &appsv1.DeploymentList{}) == 0 &&
			count(ctx, c, &appsv1.ReplicaSetList{}) == 0 && count(ctx, c, &corev1.PodList{}) == 0 &&
			count(ctx, c, &corev1.ServiceList{}, client.HasLabels{v1alpha1.LabelService}) == 0 &&
			count(ctx, c, &discoveryv1.EndpointSliceList{}, client.HasLabels{v1alpha1.LabelService}) == 0 &&
			count(ctx, c, &networkingv1.NetworkPolicyList{}) == 0
	}, wait, tick, "deleting the ModelService deletes all it made")
	require.Eventually(t, func() bool { return k.kl.Running() == 0 }, wait, tick, "and its pods' containers stop")
	require.Eventually(t, func() bool { _, ok := k.act.PickRevision("demo", ""); return !ok }, wait, tick)
	_, err := k.sdk.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "demo",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}})
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode, "the model is gone from the activator too")
}

// count lists objects in the default namespace and returns how many there
// are (-1 on error).
func count(ctx context.Context, c client.Client, list client.ObjectList, opts ...client.ListOption) int {
	if err := c.List(ctx, list, append(opts, client.InNamespace("default"))...); err != nil {
		return -1
	}
	return meta.LenList(list)
}

// update applies mutate to the latest version of the ModelService until
// the update does not conflict.
func update(ctx context.Context, c client.Client, name string, mutate func(*v1alpha1.ModelService)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ms := &v1alpha1.ModelService{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, ms); err != nil {
			return err
		}
		mutate(ms)
		return c.Update(ctx, ms)
	})
}
