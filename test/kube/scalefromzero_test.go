package kube

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// A ModelService at zero on Kubernetes: a request waits in the activator,
// whose report wakes the autoscaler in the controller; the autoscaler
// scales the revision's Deployment to one through its scale subresource;
// the ReplicaSet makes the pod, the kubelet runs it, the EndpointSlice
// controller lists it once ready, and the request is answered. Idle past
// the grace period, the Deployment goes back to zero and the pod is gone.
func TestScaleFromZeroAndBack(t *testing.T) {
	k := startKvasir(t)
	c, ctx := k.c, t.Context()

	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "default"}}
	zero := int32(0)
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: &zero, InitialScale: &zero,
		StableWindow: &metav1.Duration{Duration: 2 * time.Second}, ScaleToZeroGracePeriod: &metav1.Duration{Duration: time.Second}}
	require.NoError(t, c.Create(ctx, ms))
	require.Eventually(t, func() bool { return deploymentReplicas(c, "llama-00001-deployment") == 0 }, wait, tick,
		"the revision starts at zero")
	require.Eventually(t, func() bool { _, ok := k.act.PickRevision("llama", ""); return ok }, wait, tick,
		"the activator routes the model")
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "kvasir-serving", Name: "autoscaler-leader"}, &discoveryv1.EndpointSlice{}) == nil
	}, wait, tick, "the leader is the endpoint activators report to")

	type answer struct {
		code int
		body string
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := http.Post(k.url+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"llama","messages":[{"role":"user","content":"wake up"}],"max_tokens":8}`))
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answered <- answer{code: resp.StatusCode, body: string(b)}
	}()
	require.Eventually(t, func() bool { return deploymentReplicas(c, "llama-00001-deployment") == 1 }, wait, tick,
		"the buffered request's report scales the Deployment to one")

	a := <-answered
	require.NoError(t, a.err)
	require.Equal(t, http.StatusOK, a.code, a.body)
	require.Contains(t, a.body, `"chat.completion"`)

	// Idle past the stable window and the grace period: back to zero.
	require.Eventually(t, func() bool { return deploymentReplicas(c, "llama-00001-deployment") == 0 }, wait, tick)
	require.Eventually(t, func() bool { return k.kl.Running() == 0 }, wait, tick, "the pod is stopped")
	var evs eventsv1.EventList
	require.NoError(t, c.List(ctx, &evs, client.InNamespace("default")))
	var scaled []string
	for _, e := range evs.Items {
		if e.Regarding.Name == "llama-00001" && e.Reason == "Scaled" {
			scaled = append(scaled, e.Note)
		}
	}
	require.NotEmpty(t, scaled, "kubectl describe shows the autoscaler's decisions")
	for _, e := range evs.Items {
		if e.Regarding.Name == "llama-00001" {
			require.NotContains(t, []string{"ReadyFalse", "ReadyUnknown"}, e.Reason,
				"a revision stays ready while it wakes from zero: %s", e.Note)
		}
	}
}
