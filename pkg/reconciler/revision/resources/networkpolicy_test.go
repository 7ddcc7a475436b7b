package resources

import (
	"testing"

	"github.com/stretchr/testify/require"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/utils/ptr"

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

// Serving groups: a group's pods (leader and workers, of any of the
// revision's groups) reach each other on any port, for the group's
// rendezvous; nothing else opens: not to other revisions' pods, not to
// pods of the namespace, not to the activators beyond the queue-proxy. A
// revision without groups keeps the closed policy.
func TestNetworkPolicyOpensGroupsToThemselves(t *testing.T) {
	grouped := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(2, 1, 1), ptr.To[int32](1)
	})
	require.True(t, AnyGrouped(grouped))
	ps := []networkingv1.NetworkPolicy{*MakeNetworkPolicy(grouped, cfg)}
	lws, err := MakeLeaderWorkerSet(grouped, fleet.RoleUnified, nil, 2, cfg)
	require.NoError(t, err)
	leader := netpol.Pod{Namespace: "ns", Labels: lws.Spec.LeaderWorkerTemplate.LeaderTemplate.Labels}
	worker := netpol.Pod{Namespace: "ns", Labels: lws.Spec.LeaderWorkerTemplate.WorkerTemplate.Labels}
	for _, port := range []int32{29500, 6379, 13345, names.QueueProxyPort, 1} { // NCCL, Ray, vLLM's RPC
		require.True(t, netpol.Allows(ps, leader, worker, port), "worker to leader, port %d", port)
		require.True(t, netpol.Allows(ps, worker, leader, port), "leader to worker, port %d", port)
		require.True(t, netpol.Allows(ps, worker, worker, port), "worker to worker, port %d", port)
	}
	activator := netpol.Pod{Namespace: "kvasir-serving", Labels: map[string]string{LabelAppName: AppName, LabelComponent: ComponentActivator}}
	require.True(t, netpol.Allows(ps, leader, activator, names.QueueProxyPort))
	require.False(t, netpol.Allows(ps, worker, activator, 29500), "the activator reaches the queue-proxy only")
	require.False(t, netpol.Allows(ps, leader, activator, 8000))
	other := revision(func(r *v1alpha1.ModelRevision) {
		r.Name = "llama-00001"
		r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(2, 1, 1), ptr.To[int32](1)
	})
	otherLWS, err := MakeLeaderWorkerSet(other, fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	for name, from := range map[string]netpol.Pod{
		"another revision's worker":         {Namespace: "ns", Labels: otherLWS.Spec.LeaderWorkerTemplate.WorkerTemplate.Labels},
		"another revision's leader":         {Namespace: "ns", Labels: otherLWS.Spec.LeaderWorkerTemplate.LeaderTemplate.Labels},
		"a pod of the namespace":            {Namespace: "ns", Labels: map[string]string{"app": "x"}},
		"a look-alike in another namespace": {Namespace: "other", Labels: worker.Labels},
		"a forged group-worker label":       {Namespace: "ns", Labels: map[string]string{LabelGroupWorker: "unified"}},
	} {
		require.False(t, netpol.Allows(ps, worker, from, 29500), name)
		require.False(t, netpol.Allows(ps, leader, from, 29500), name)
	}

	// One pod a replica: no group, the policy stays closed between pods.
	single := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(2, 1, 1), ptr.To[int32](2)
	})
	require.False(t, AnyGrouped(single))
	d, err := MakeDeployment(single, fleet.RoleUnified, nil, 2, cfg)
	require.NoError(t, err)
	pod := netpol.Pod{Namespace: "ns", Labels: d.Spec.Template.Labels}
	require.False(t, netpol.Allows([]networkingv1.NetworkPolicy{*MakeNetworkPolicy(single, cfg)}, pod, pod, 29500))
}
