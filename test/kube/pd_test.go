package kube

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
)

// Prefill/decode disaggregation on a cluster: the revision's two roles get
// a Deployment and a Service each, their pods (simulators in the prefill
// and decode roles) join their own EndpointSlices, and the activator, fed by
// informers, prefills a new prompt on the prefill pod and decodes it on the
// decode pod.
func TestPrefillDecodeOnACluster(t *testing.T) {
	k := startKvasir(t)
	c, ctx := k.c, t.Context()

	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "pd", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Args: []string{"--zero-latency"}}
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: ptr.To[int32](1)}
	ms.Spec.Template.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{}}
	require.NoError(t, c.Create(ctx, ms))
	require.Eventually(t, func() bool {
		got := &v1alpha1.ModelService{}
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "pd"}, got) == nil && got.Status.IsReady()
	}, wait, tick, "both roles ready")
	require.Eventually(t, func() bool { return k.kl.Running() == 2 }, wait, tick, "a prefill pod and a decode pod")
	out := k.kubectl(t, "get", "deployments,services")
	require.Contains(t, out, "pd-00001-prefill")
	require.Contains(t, out, "pd-00001-decode")

	require.Eventually(t, func() bool { _, ok := k.act.PickRevision("pd", ""); return ok }, wait, tick)
	remote := map[string]string{"namespace": "default", "service": "pd", "revision": "pd-00001", "prefill": "remote"}
	// The decode pod's EndpointSlice may be listed before the prefill
	// pod's: ask until a prompt is prefilled remotely.
	var failed atomic.Int32
	require.Eventually(t, func() bool {
		resp, err := k.sdk.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "pd", MaxTokens: openai.Int(6),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(strings.Repeat("a long shared system prompt ", 64) + t.Name())}})
		if err != nil || resp.Usage.CompletionTokens != 6 {
			failed.Add(1) // every request must be answered whole
			t.Logf("request failed: %v", err)
			return false
		}
		n, _ := promtest.Value(k.reg, "kvasir_activator_pd_requests_total", remote)
		return n >= 1
	}, wait, tick, "the activator prefills remotely")
	require.Zero(t, failed.Load(), "requests failed")
	k.checkRevisionPods(t, "pd-00001", 8000)
}
