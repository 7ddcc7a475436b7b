package revision

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/fleet/kube"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/modelservice"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
	"github.com/kvasir-serving/kvasir/pkg/testing/netpol"
)

var testResources = resources.Config{QueueProxyImage: "qp", SimulatorImage: "sim"}

// groupedService is a ModelService whose replicas are groups of two pods
// (tensor 2 on nodes of one accelerator).
func groupedService(name string) *v1alpha1.ModelService {
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	ms.Spec.Template.Parallelism = &v1alpha1.ParallelismSpec{Tensor: ptr.To[int32](2)}
	ms.Spec.Template.AcceleratorsPerNode = ptr.To[int32](1)
	return ms
}

// A ModelService whose replicas are groups of two pods: its revision makes
// one LeaderWorkerSet (size 2, the builder's templates, owned by the
// revision) and no Deployment; the revision is ready from the set's ready
// groups; the autoscaler's scaler sets the set's replicas through its
// scale subresource, and the reconciler keeps them; the revision's
// NetworkPolicy lets the group's pods reach each other; deleting the
// ModelService deletes the set (owner references, the garbage collector).
func TestGroupedRoleIsALeaderWorkerSet(t *testing.T) {
	cl := kubetest.StartCluster(t, kubetest.LWSCRD(t))
	t.Cleanup(kubetest.Manager(t, cl.Config, func(mgr ctrl.Manager) error {
		rec := mgr.GetEventRecorder("kvasir-controller")
		if err := (&modelservice.Reconciler{Client: mgr.GetClient(), Events: rec, BaseURL: "http://activator/v1",
			KeepRevisions: 2}).SetupWithManager(mgr); err != nil {
			return err
		}
		return (&Reconciler{Client: mgr.GetClient(), Events: rec, Resources: testResources}).SetupWithManager(mgr)
	}, func(o *ctrl.Options) { o.Cache = reconciler.CacheOptions("") }))
	c := kubetest.Client(t, cl.Config)
	ctx := context.Background()
	ms := groupedService("llama")
	require.NoError(t, c.Create(ctx, ms))

	key := client.ObjectKey{Namespace: "default", Name: "llama-00001-group"}
	lws := &lwsv1.LeaderWorkerSet{}
	require.Eventually(t, func() bool { return c.Get(ctx, key, lws) == nil }, wait, tick)
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001"}, rev))
	want, err := resources.MakeLeaderWorkerSet(rev, fleet.RoleUnified, nil, 1, testResources)
	require.NoError(t, err)
	require.Equal(t, int32(2), *lws.Spec.LeaderWorkerTemplate.Size)
	require.Equal(t, int32(1), *lws.Spec.Replicas)
	require.True(t, equality.Semantic.DeepDerivative(want.Spec, lws.Spec), cmp.Diff(want.Spec, lws.Spec))
	require.Equal(t, "llama-00001", lws.OwnerReferences[0].Name)
	require.True(t, *lws.OwnerReferences[0].Controller)
	require.Equal(t, "unified", lws.Spec.LeaderWorkerTemplate.WorkerTemplate.Labels[resources.LabelGroupWorker])
	require.NotContains(t, lws.Spec.LeaderWorkerTemplate.WorkerTemplate.Labels, v1alpha1.LabelRole, "the Service never selects a worker")

	// No Deployment for the role, ever; the Service exists (the leaders).
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001"}, &corev1.Service{}) == nil
	}, wait, tick)
	ds := &appsv1.DeploymentList{}
	require.NoError(t, c.List(ctx, ds, client.InNamespace("default")))
	require.Empty(t, ds.Items)
	np := &networkingv1.NetworkPolicy{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001"}, np))
	leader := netpol.Pod{Namespace: "default", Labels: lws.Spec.LeaderWorkerTemplate.LeaderTemplate.Labels}
	worker := netpol.Pod{Namespace: "default", Labels: lws.Spec.LeaderWorkerTemplate.WorkerTemplate.Labels}
	require.True(t, netpol.Allows([]networkingv1.NetworkPolicy{*np}, leader, worker, 29500), "the group's rendezvous")

	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "llama-00001")
		return s == "Unknown" && reason == v1alpha1.ReasonDeploying
	}, wait, tick)
	// The test plays the LWS controller: one group is ready (the
	// reconciler watches the set).
	lws.Status.Replicas, lws.Status.ReadyReplicas = 1, 1
	require.NoError(t, c.Status().Update(ctx, lws))
	require.Eventually(t, func() bool {
		s, _ := readyOf(t, c, "llama-00001")
		return s == "True"
	}, wait, tick)
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rev), rev))
	require.Equal(t, int32(1), *rev.Status.ActualReplicas, "groups, not pods")

	// Scaling: groups, through the scale subresource; the reconciler does
	// not undo it.
	scaler := &kube.Scaler{Client: c}
	fk := fleet.Key{Namespace: "default", Service: "llama", Revision: "llama-00001", Role: fleet.RoleUnified}
	require.NoError(t, scaler.Scale(ctx, fk, 3))
	require.NoError(t, c.Get(ctx, key, lws))
	require.Equal(t, int32(3), *lws.Spec.Replicas)
	require.Equal(t, int32(2), *lws.Spec.LeaderWorkerTemplate.Size, "scaling adds groups, not pods to a group")
	require.Error(t, scaler.Scale(ctx, fk, -1))
	require.Error(t, scaler.ScaleVariants(ctx, fk, map[string]int{"h100": 1}), "no such variant")
	// A later pass (status change) keeps the autoscaler's count.
	require.NoError(t, c.Get(ctx, key, lws))
	lws.Status.Replicas = 3
	require.NoError(t, c.Status().Update(ctx, lws))
	require.Eventually(t, func() bool {
		got := &v1alpha1.ModelRevision{}
		return c.Get(ctx, client.ObjectKeyFromObject(rev), got) == nil &&
			got.Status.DesiredReplicas != nil && *got.Status.DesiredReplicas == 3
	}, wait, tick)
	require.NoError(t, c.Get(ctx, key, lws))
	require.Equal(t, int32(3), *lws.Spec.Replicas)

	// Deleting the ModelService deletes its revision and so the set.
	require.NoError(t, c.Delete(ctx, ms))
	require.Eventually(t, func() bool { return apierrs.IsNotFound(c.Get(ctx, key, &lwsv1.LeaderWorkerSet{})) }, wait, tick)
}

// Without the LeaderWorkerSet API, a grouped revision is not ready and
// says why and how to fix it; the reconciler does not fail in a loop, and
// an ungrouped revision of the same cluster deploys as ever.
func TestGroupedRoleWithoutLeaderWorkerSet(t *testing.T) {
	c := start(t) // config/'s CRDs only
	ctx := context.Background()
	rev := newRevision("llama-00001")
	rev.Spec.Parallelism = &v1alpha1.ParallelismSpec{Tensor: ptr.To[int32](2)}
	rev.Spec.AcceleratorsPerNode = ptr.To[int32](1)
	require.NoError(t, c.Create(ctx, rev))
	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "llama-00001")
		return s == "False" && reason == ReasonLeaderWorkerSetNotInstalled
	}, wait, tick)
	got := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rev), got))
	msg := got.Status.GetCondition(v1alpha1.RevisionConditionReady).Message
	require.True(t, strings.Contains(msg, "sigs.k8s.io/lws v0.7.0") && strings.Contains(msg, "docs/kubernetes.md"), msg)
	ds := &appsv1.DeploymentList{}
	require.NoError(t, c.List(ctx, ds, client.InNamespace("default")))
	require.Empty(t, ds.Items, "never a Deployment in place of the set")

	plain := newRevision("llama-00002")
	require.NoError(t, c.Create(ctx, plain))
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00002-deployment"}, &appsv1.Deployment{}) == nil
	}, wait, tick)
}

// What the builder makes still matches once the API server (with LWS's
// CRD and its schema defaults) has stored it; otherwise every pass would
// rewrite the set, racing the autoscaler's scale.
func TestLeaderWorkerSetSurvivesDefaulting(t *testing.T) {
	c := kubetest.Client(t, kubetest.StartWithLWS(t))
	ctx := context.Background()
	for _, typ := range engineTypes {
		rev := newRevision("llama-00001")
		rev.UID = "uid"
		rev.Spec.Engine = v1alpha1.EngineSpec{Type: typ, Port: 8000, Image: engineImage(typ)}
		rev.Spec.Parallelism = &v1alpha1.ParallelismSpec{Tensor: ptr.To[int32](2)}
		rev.Spec.AcceleratorsPerNode = ptr.To[int32](1)
		want, err := resources.MakeLeaderWorkerSet(rev, fleet.RoleUnified, nil, 1, testResources)
		require.NoError(t, err, typ)
		want.OwnerReferences = nil
		got := want.DeepCopy()
		require.NoError(t, c.Create(ctx, got, client.DryRunAll), typ)
		require.True(t, equality.Semantic.DeepDerivative(want.Spec, got.Spec), "%s: %s", typ, cmp.Diff(want.Spec, got.Spec))
	}
}
