package revision

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

const wait, tick = 30 * time.Second, 20 * time.Millisecond

func start(t *testing.T) client.Client {
	t.Helper()
	cfg := kubetest.Start(t)
	t.Cleanup(kubetest.Manager(t, cfg, func(mgr ctrl.Manager) error {
		return (&Reconciler{Client: mgr.GetClient(), Events: mgr.GetEventRecorder("kvasir-controller"),
			Resources: resources.Config{QueueProxyImage: "qp", SimulatorImage: "sim"}}).SetupWithManager(mgr)
	}))
	return kubetest.Client(t, cfg)
}

func newRevision(name string) *v1alpha1.ModelRevision {
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
		Labels: map[string]string{v1alpha1.LabelService: "llama", v1alpha1.LabelRevisionGeneration: "1"}}}
	rev.Spec.Model = "llama"
	rev.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
	rev.Spec.TimeoutSeconds = 600
	one := int32(1)
	rev.Spec.Scaling.MinScale, rev.Spec.Scaling.MaxScale, rev.Spec.Scaling.InitialScale = &one, &one, &one
	return rev
}

func readyOf(t *testing.T, c client.Client, name string) (status, reason string) {
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, rev))
	cond := rev.Status.GetCondition(v1alpha1.RevisionConditionReady)
	if cond == nil {
		return "", ""
	}
	return string(cond.Status), cond.Reason
}

// A revision gets its Deployment and Service, owned by it; it is ready once
// its Deployment has a ready replica (envtest runs no kubelet: the test
// plays it), and says why not when its pods cannot be scheduled.
func TestRevisionDeploysAndReportsWhy(t *testing.T) {
	c := start(t)
	ctx := context.Background()
	rev := newRevision("llama-00001")
	require.NoError(t, c.Create(ctx, rev))

	d := &appsv1.Deployment{}
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001-deployment"}, d) == nil
	}, wait, tick)
	require.Equal(t, "llama-00001", d.OwnerReferences[0].Name)
	require.Equal(t, int32(1), *d.Spec.Replicas)
	svc := &corev1.Service{}
	require.Eventually(t, func() bool { // made right after the Deployment
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001"}, svc) == nil
	}, wait, tick)
	np := &networkingv1.NetworkPolicy{} // made before the Deployment: no pod runs unprotected
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001"}, np))
	require.Equal(t, "llama-00001", np.OwnerReferences[0].Name)
	require.Equal(t, resources.MakeNetworkPolicy(rev, resources.Config{}).Spec.Ingress, np.Spec.Ingress)
	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "llama-00001")
		return s == "Unknown" && reason == v1alpha1.ReasonDeploying
	}, wait, tick)

	// A pod that no node can take, for lack of accelerators.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "llama-00001-abc", Namespace: "default", Labels: d.Spec.Template.Labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "engine", Image: "sim"}}}}
	require.NoError(t, c.Create(ctx, pod))
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}}
	require.NoError(t, c.Status().Update(ctx, pod))
	// The pod's change alone is seen: the reconciler watches revisions'
	// pods.
	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "llama-00001")
		return s == "False" && reason == v1alpha1.ReasonUnschedulable
	}, wait, tick)
	got := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rev), got))
	require.Contains(t, got.Status.GetCondition(v1alpha1.RevisionConditionReady).Message, "nvidia.com/gpu")

	// The pod is placed and becomes ready.
	require.NoError(t, c.Delete(ctx, pod))
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(d), d))
	d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas = 1, 1, 1, 1
	require.NoError(t, c.Status().Update(ctx, d))
	require.Eventually(t, func() bool {
		s, _ := readyOf(t, c, "llama-00001")
		return s == "True"
	}, wait, tick)
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(rev), got))
	require.Equal(t, int32(1), *got.Status.ActualReplicas)
	require.Equal(t, "serving.kvasir.dev/revision=llama-00001,serving.kvasir.dev/role=unified", got.Status.Selector)
}

func TestPodTrouble(t *testing.T) {
	waiting := func(reason, msg string) corev1.Pod {
		return corev1.Pod{Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{Name: "engine",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}}}}
	}
	reason, msg := podTrouble([]corev1.Pod{waiting("ImagePullBackOff", `Back-off pulling image "vllm/nope"`)})
	require.Equal(t, v1alpha1.ReasonImagePullFailed, reason)
	require.Contains(t, msg, "vllm/nope")
	reason, _ = podTrouble([]corev1.Pod{waiting("CrashLoopBackOff", "back-off 40s restarting failed container")})
	require.Equal(t, v1alpha1.ReasonEngineFailed, reason)
	reason, msg = podTrouble([]corev1.Pod{waiting("CreateContainerConfigError", "container has runAsNonRoot and image will run as root")})
	require.Equal(t, v1alpha1.ReasonEngineFailed, reason)
	require.Contains(t, msg, "runAsNonRoot")
	reason, _ = podTrouble([]corev1.Pod{waiting("ContainerCreating", "")})
	require.Empty(t, reason)
}

// What the builder makes must still match once the API server has filled
// in its defaults; otherwise every pass rewrites the Deployment, racing
// the autoscaler's writes to its scale.
func TestDeploymentSurvivesDefaulting(t *testing.T) {
	c := kubetest.Client(t, kubetest.Start(t))
	ctx := context.Background()
	for _, typ := range engineTypes {
		rev := newRevision("llama-00001")
		rev.UID = "uid"
		rev.Spec.Engine = v1alpha1.EngineSpec{Type: typ, Port: 8000, Image: engineImage(typ)}
		for _, role := range []string{fleet.RoleUnified, fleet.RolePrefill} {
			want, err := resources.MakeDeployment(rev, role, nil, 1, resources.Config{QueueProxyImage: "qp", SimulatorImage: "sim"})
			require.NoError(t, err)
			want.OwnerReferences = nil
			got := want.DeepCopy()
			require.NoError(t, c.Create(ctx, got, client.DryRunAll))
			require.True(t, equality.Semantic.DeepDerivative(want.Spec, got.Spec), "%s role %s: %s", typ, role, cmp.Diff(want.Spec, got.Spec))
		}
		rev.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{}}
		want := resources.MakeNetworkPolicy(rev, resources.Config{})
		want.OwnerReferences = nil
		got := want.DeepCopy()
		require.NoError(t, c.Create(ctx, got, client.DryRunAll))
		require.True(t, equality.Semantic.DeepDerivative(want.Spec, got.Spec), "network policy: %s", cmp.Diff(want.Spec, got.Spec))
	}
}

var engineTypes = []v1alpha1.EngineType{v1alpha1.EngineVLLM, v1alpha1.EngineSGLang, v1alpha1.EngineSim, v1alpha1.EngineCustom}

func engineImage(typ v1alpha1.EngineType) string {
	if typ == v1alpha1.EngineCustom {
		return "registry.example.com/engine"
	}
	return ""
}

// The API server's PodSecurity admission, enforcing the restricted
// profile in a namespace, admits the pods of every engine's revision; and
// refuses a pod without their security contexts (so it is on).
func TestRevisionPodsPassRestrictedAdmission(t *testing.T) {
	c := kubetest.Client(t, kubetest.Start(t))
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "restricted", Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}}
	require.NoError(t, c.Create(ctx, ns))
	pod := func(d *appsv1.Deployment) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Namespace: ns.Name,
			Labels: d.Spec.Template.Labels}, Spec: *d.Spec.Template.Spec.DeepCopy()}
	}
	for _, typ := range engineTypes {
		rev := newRevision("llama-00001")
		rev.Namespace = ns.Name
		rev.Spec.Engine = v1alpha1.EngineSpec{Type: typ, Port: 8000, Image: engineImage(typ)}
		d, err := resources.MakeDeployment(rev, fleet.RoleUnified, nil, 1, resources.Config{QueueProxyImage: "qp", SimulatorImage: "sim"})
		require.NoError(t, err)
		require.NoError(t, c.Create(ctx, pod(d), client.DryRunAll), "engine %s", typ)

		if typ == v1alpha1.EngineVLLM {
			bare := pod(d)
			bare.Spec.SecurityContext = nil
			for i := range bare.Spec.Containers {
				bare.Spec.Containers[i].SecurityContext = nil
			}
			err := c.Create(ctx, bare, client.DryRunAll)
			require.Error(t, err, "PodSecurity admission is on")
			require.Contains(t, err.Error(), "violates PodSecurity \"restricted:latest\"")
		}
	}
}

// A role's Deployment starts with spec.replicas when an external scaler
// set it (not for prefill), else with the role's initial scale (1 when
// unset), at least its minScale and at most its maxScale.
func TestInitialReplicas(t *testing.T) {
	n := func(v int32) *int32 { return &v }
	for _, tc := range []struct {
		name    string
		replica *int32
		scaling v1alpha1.ScalingSpec
		roles   *v1alpha1.RolesSpec
		role    string
		want    int32
	}{
		{name: "default", want: 1},
		{name: "initial scale", scaling: v1alpha1.ScalingSpec{InitialScale: n(3)}, want: 3},
		{name: "initial scale zero", scaling: v1alpha1.ScalingSpec{InitialScale: n(0)}, want: 0},
		{name: "at least minScale", scaling: v1alpha1.ScalingSpec{InitialScale: n(1), MinScale: n(2)}, want: 2},
		{name: "at most maxScale", scaling: v1alpha1.ScalingSpec{InitialScale: n(5), MaxScale: n(3)}, want: 3},
		{name: "maxScale 0 is unbounded", scaling: v1alpha1.ScalingSpec{InitialScale: n(5), MaxScale: n(0)}, want: 5},
		{name: "external scaler", replica: n(4), scaling: v1alpha1.ScalingSpec{MaxScale: n(2)}, want: 4},
		{name: "a role's own scaling", role: fleet.RolePrefill, replica: n(4),
			roles: &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{Scaling: &v1alpha1.ScalingSpec{InitialScale: n(6), MaxScale: n(2)}}},
			want:  2},
		{name: "a role without its own scaling", role: fleet.RoleDecode,
			scaling: v1alpha1.ScalingSpec{InitialScale: n(2)}, roles: &v1alpha1.RolesSpec{Decode: &v1alpha1.RoleSpec{}}, want: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev := &v1alpha1.ModelRevision{}
			rev.Spec.Replicas, rev.Spec.Scaling, rev.Spec.Roles = tc.replica, tc.scaling, tc.roles
			require.Equal(t, tc.want, initialReplicas(rev, tc.role))
		})
	}
}
