package resources

import (
	"testing"

	"github.com/stretchr/testify/require"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
	"github.com/kvasir-serving/kvasir/pkg/testing/netpol"
)

// Under a revision's NetworkPolicy only Kvasir's activators and controller
// reach its pods, and only on the queue-proxy port; prefill and decode pods
// of one revision reach each other (KV transfer).
func TestNetworkPolicyLetsOnlyKvasirIn(t *testing.T) {
	r := revision(nil)
	np := MakeNetworkPolicy(r, cfg)
	require.Equal(t, "llama-00002", np.Name)
	require.Equal(t, "ns", np.Namespace)
	require.Equal(t, "llama-00002", np.OwnerReferences[0].Name)
	require.Equal(t, "llama-00002", np.Labels[v1alpha1.LabelRevision], "the controller's cache holds what carries it")
	ps := []networkingv1.NetworkPolicy{*np}

	d, err := MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	pod := netpol.Pod{Namespace: "ns", Labels: d.Spec.Template.Labels}
	kvasir := func(ns, component string) netpol.Pod {
		return netpol.Pod{Namespace: ns, Labels: map[string]string{LabelAppName: AppName, LabelComponent: component}}
	}
	activator, controller := kvasir("kvasir-serving", ComponentActivator), kvasir("kvasir-serving", ComponentController)
	require.True(t, netpol.Allows(ps, pod, activator, names.QueueProxyPort))
	require.True(t, netpol.Allows(ps, pod, controller, names.QueueProxyPort), "the autoscaler follows the stats streams")
	require.False(t, netpol.Allows(ps, pod, activator, r.Spec.Engine.Port), "the engine is behind the queue-proxy")
	for name, from := range map[string]netpol.Pod{
		"a pod of the revision's namespace": {Namespace: "ns", Labels: map[string]string{"app": "x"}},
		"an activator look-alike elsewhere": kvasir("ns", ComponentActivator),
		"another pod of Kvasir's namespace": {Namespace: "kvasir-serving", Labels: map[string]string{LabelAppName: AppName}},
		"another revision's pod":            {Namespace: "ns", Labels: Labels(revision(func(r *v1alpha1.ModelRevision) { r.Name = "llama-00001" }), fleet.RoleUnified)},
	} {
		require.False(t, netpol.Allows(ps, pod, from, names.QueueProxyPort), name)
	}

	// Kvasir installed elsewhere.
	moved := []networkingv1.NetworkPolicy{*MakeNetworkPolicy(r, Config{SystemNamespace: "kvasir"})}
	require.True(t, netpol.Allows(moved, pod, kvasir("kvasir", ComponentActivator), names.QueueProxyPort))
	require.False(t, netpol.Allows(moved, pod, activator, names.QueueProxyPort))

	// Prefill and decode: the decode engine pulls the KV cache from the
	// prefill pod, on ports of the engine's choosing.
	split := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{}}
	})
	ps = []networkingv1.NetworkPolicy{*MakeNetworkPolicy(split, cfg)}
	prefill := netpol.Pod{Namespace: "ns", Labels: DeploymentLabels(split, fleet.RolePrefill, "h100")}
	decode := netpol.Pod{Namespace: "ns", Labels: DeploymentLabels(split, fleet.RoleDecode, "")}
	require.True(t, netpol.Allows(ps, prefill, decode, 5600), "NIXL's side channel")
	require.True(t, netpol.Allows(ps, decode, prefill, 5600))
	require.True(t, netpol.Allows(ps, decode, activator, names.QueueProxyPort))
	require.False(t, netpol.Allows(ps, prefill, activator, 5600))
	require.False(t, netpol.Allows(ps, prefill, netpol.Pod{Namespace: "ns", Labels: map[string]string{"app": "x"}}, 5600))
}
