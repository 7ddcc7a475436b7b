package kube

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

const wait, tick = 30 * time.Second, 20 * time.Millisecond

func pct(n int64) *int64 { return &n }

func revision(name string) *v1alpha1.ModelRevision {
	r := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
		Labels: map[string]string{v1alpha1.LabelService: "llama", v1alpha1.LabelRevisionGeneration: name[len(name)-1:]}}}
	r.Spec.Model = "llama"
	r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
	r.Spec.TimeoutSeconds = 600
	return r
}

func slice(name, service string, ips ...string) *discoveryv1.EndpointSlice {
	port, portName, ready := int32(8012), "http", true
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
		Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}}}
	for i, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: name + "-pod-" + string(rune('a'+i))}})
	}
	return s
}

// An activator fed by informers routes by the ModelService's resolved
// traffic: over 10,000 decisions the 90/10 split is within one percentage
// point, the tag reaches its revision, and the EndpointSlices' ready
// addresses become its endpoints.
func TestActivatorFollowsTheCluster(t *testing.T) {
	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()

	for _, name := range []string{"llama-00001", "llama-00002"} {
		require.NoError(t, c.Create(ctx, revision(name)))
	}
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	require.NoError(t, c.Create(ctx, ms))
	ms.Status.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00001", Percent: pct(90)},
		{RevisionName: "llama-00002", Percent: pct(10), Tag: "canary"}}
	require.NoError(t, c.Status().Update(ctx, ms))
	require.NoError(t, c.Create(ctx, slice("llama-00001-x", "llama-00001", "10.0.0.1", "10.0.0.2")))
	require.NoError(t, c.Create(ctx, slice("llama-00002-x", "llama-00002", "10.0.0.3")))

	act, err := activator.New(activator.DefaultConfig(), activator.WithRegisterer(prometheus.NewRegistry()),
		activator.WithStatsStreams(false), activator.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	sync, err := New(cfg, act, Options{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sync.Run(sctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })

	k1 := fleet.Key{Namespace: "default", Service: "llama", Revision: "llama-00001"}
	require.Eventually(t, func() bool {
		l, ok := act.Load(k1)
		return ok && l.Ready == 2
	}, wait, tick)
	rev, ok := act.PickRevision("llama", "canary")
	require.True(t, ok)
	require.Equal(t, "llama-00002", rev)
	n := 0
	for range 10000 {
		if rev, _ := act.PickRevision("llama", ""); rev == "llama-00002" {
			n++
		}
	}
	require.InDelta(t, 1000, n, 100, "10%% of 10,000 decisions, within one percentage point")

	// Promotion: the split follows the status.
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(ms), ms))
	ms.Status.Traffic = []v1alpha1.TrafficTarget{{RevisionName: "llama-00002", Percent: pct(100)}}
	require.NoError(t, c.Status().Update(ctx, ms))
	require.Eventually(t, func() bool {
		rev, _ := act.PickRevision("llama", "")
		_, tagged := act.PickRevision("llama", "canary")
		return rev == "llama-00002" && !tagged
	}, wait, tick)
}
