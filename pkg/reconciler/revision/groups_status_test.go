package revision

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// testRecheck is the reconciler's APIRecheck in these tests.
const testRecheck = 200 * time.Millisecond

// startGroups runs the revision reconciler against cfg, looking at the
// cluster's APIs every testRecheck.
func startGroups(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	t.Cleanup(kubetest.Manager(t, cfg, func(mgr ctrl.Manager) error {
		return (&Reconciler{Client: mgr.GetClient(), Events: mgr.GetEventRecorder("kvasir-controller"),
			Resources: testResources, APIRecheck: testRecheck}).SetupWithManager(mgr)
	}))
	return kubetest.Client(t, cfg)
}

// groupedRevision is a revision whose replicas are groups of two pods
// (tensor 2 on nodes of one accelerator), groups of them.
func groupedRevision(name string, groups int32) *v1alpha1.ModelRevision {
	rev := newRevision(name)
	rev.Spec.Parallelism = &v1alpha1.ParallelismSpec{Tensor: ptr.To[int32](2)}
	rev.Spec.AcceleratorsPerNode = ptr.To[int32](1)
	rev.Spec.Scaling.MinScale, rev.Spec.Scaling.MaxScale, rev.Spec.Scaling.InitialScale = &groups, &groups, &groups
	rev.Spec.Replicas = &groups // the API server's default is 1
	return rev
}

func revisionOf(t *testing.T, c client.Client, name string) *v1alpha1.ModelRevision {
	t.Helper()
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, rev))
	return rev
}

// playLWSPod creates the pod LWS would make for group g, index w (0: the
// leader) of set, from the set's templates, with status st.
func playLWSPod(t *testing.T, c client.Client, set *lwsv1.LeaderWorkerSet, g, w int, st corev1.PodStatus) *corev1.Pod {
	t.Helper()
	tmpl := set.Spec.LeaderWorkerTemplate.WorkerTemplate
	name, owner := fmt.Sprintf("%s-%d-%d", set.Name, g, w), fmt.Sprintf("%s-%d", set.Name, g)
	if w == 0 {
		tmpl, name, owner = *set.Spec.LeaderWorkerTemplate.LeaderTemplate, fmt.Sprintf("%s-%d", set.Name, g), set.Name
	}
	labels := map[string]string{lwsv1.SetNameLabelKey: set.Name, lwsv1.GroupIndexLabelKey: fmt.Sprint(g),
		lwsv1.WorkerIndexLabelKey: fmt.Sprint(w)}
	for k, v := range tmpl.Labels {
		labels[k] = v
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: set.Namespace, Labels: labels,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: owner,
			UID: types.UID("uid-" + owner), Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "engine", Image: "sim"}}}}
	require.NoError(t, c.Create(context.Background(), pod))
	pod.Status = st
	require.NoError(t, c.Status().Update(context.Background(), pod))
	return pod
}

func readyStatus() corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
}

func unschedulableStatus(msg string) corev1.PodStatus {
	return corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled,
		Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: msg}}}
}

const noGPU = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."

// A grouped revision's status shows its groups (pods per group, desired
// and ready, why each is not ready, read from the pods LWS made), and its
// conditions say why per group; pod changes alone are seen (the
// reconciler watches revisions' pods). Its topology key is LWS's
// exclusive topology on its set. Pods forged to look like a group's (the
// revision's labels, or another revision's) change no revision's status.
func TestGroupStatusSaysWhyPerGroup(t *testing.T) {
	c := startGroups(t, kubetest.StartWithLWS(t))
	ctx := context.Background()
	rev := groupedRevision("demo-00001", 2)
	rev.Spec.TopologyKey = "topology.kubernetes.io/zone"
	require.NoError(t, c.Create(ctx, rev))
	other := groupedRevision("demo-00002", 1)
	require.NoError(t, c.Create(ctx, other))

	set := &lwsv1.LeaderWorkerSet{}
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "demo-00001-group"}, set) == nil
	}, wait, tick)
	require.Equal(t, "topology.kubernetes.io/zone", set.Annotations[lwsv1.ExclusiveKeyAnnotationKey])
	otherSet := &lwsv1.LeaderWorkerSet{}
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "demo-00002-group"}, otherSet) == nil
	}, wait, tick)
	require.Empty(t, otherSet.Annotations, "no topology key, no exclusive topology")

	// No pods yet: waiting, group by group.
	require.Eventually(t, func() bool {
		got := revisionOf(t, c, "demo-00001")
		ra := got.Status.GetCondition(v1alpha1.RevisionConditionResourcesAvailable)
		return ra != nil && ra.Reason == v1alpha1.ReasonDeploying && strings.Contains(ra.Message,
			"waiting for 2 replica(s) to be ready: group 0: no leader pod demo-00001-group-0 yet; group 1: no leader pod demo-00001-group-1 yet")
	}, wait, tick)
	got := revisionOf(t, c, "demo-00001")
	require.Equal(t, "2", got.Status.PodsPerGroup)
	require.Equal(t, []v1alpha1.GroupSetStatus{{Role: "unified", LeaderWorkerSet: "demo-00001-group", PodsPerGroup: 2,
		Groups: 2, ReadyGroups: 0, NotReady: []string{"group 0: no leader pod demo-00001-group-0 yet",
			"group 1: no leader pod demo-00001-group-1 yet"}}}, got.Status.Groups)
	gang := got.Status.GetCondition(v1alpha1.RevisionConditionGangScheduled)
	require.Equal(t, v1alpha1.ReasonNoGangScheduler, gang.Reason)
	require.Contains(t, gang.Message, "RecreateGroupOnPodRestart")

	// Forged pods, before the real ones: the revision's labels without
	// LWS's owner or naming; one claiming the other revision's group but
	// owned by this one's StatefulSet; one with a malformed index.
	forged := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "forged-worker", Labels: map[string]string{v1alpha1.LabelRevision: "demo-00001",
			v1alpha1.LabelRole: "unified", lwsv1.SetNameLabelKey: "demo-00001-group", lwsv1.GroupIndexLabelKey: "0",
			lwsv1.WorkerIndexLabelKey: "1"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "demo-00002-group-0-1", Labels: map[string]string{v1alpha1.LabelRevision: "demo-00002",
			"serving.kvasir.dev/group-worker": "unified", lwsv1.SetNameLabelKey: "demo-00002-group", lwsv1.GroupIndexLabelKey: "0",
			lwsv1.WorkerIndexLabelKey: "1"}, OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet",
			Name: "demo-00001-group-0", UID: "uid-demo-00001-group-0", Controller: ptr.To(true)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "demo-00002-group-0", Labels: map[string]string{v1alpha1.LabelRevision: "demo-00002",
			v1alpha1.LabelRole: "unified", lwsv1.SetNameLabelKey: "demo-00002-group", lwsv1.GroupIndexLabelKey: "00",
			lwsv1.WorkerIndexLabelKey: "0"}, OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet",
			Name: "demo-00002-group", UID: "forged", Controller: ptr.To(true)}}}},
	}
	for _, p := range forged {
		p.Namespace = "default"
		p.Spec.Containers = []corev1.Container{{Name: "engine", Image: "sim"}}
		require.NoError(t, c.Create(ctx, p))
		p.Status = unschedulableStatus("forged: 0/1 nodes are available")
		require.NoError(t, c.Status().Update(ctx, p))
	}
	// The test plays LWS: group 0 is ready; group 1's worker finds no GPU.
	playLWSPod(t, c, set, 0, 0, readyStatus())
	playLWSPod(t, c, set, 0, 1, readyStatus())
	playLWSPod(t, c, set, 1, 0, readyStatus())
	worker1 := playLWSPod(t, c, set, 1, 1, unschedulableStatus(noGPU))
	// The set says one group is ready.
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(set), set))
	set.Status.Replicas, set.Status.ReadyReplicas = 2, 1
	require.NoError(t, c.Status().Update(ctx, set))

	want := "group 1: worker pod demo-00001-group-1-1 Pending: Unschedulable: " + noGPU
	require.Eventually(t, func() bool {
		got := revisionOf(t, c, "demo-00001")
		return got.Status.IsReady() && len(got.Status.Groups) == 1 && got.Status.Groups[0].ReadyGroups == 1 &&
			len(got.Status.Groups[0].NotReady) == 1 && got.Status.Groups[0].NotReady[0] == want
	}, wait, tick, "ready with one group of two; the other's worker is unschedulable")

	// Group 0's worker loses its node too and the set has no ready group:
	// the revision is not ready, and says why for each group.
	w0 := &corev1.Pod{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "demo-00001-group-0-1"}, w0))
	w0.Status = unschedulableStatus(noGPU)
	require.NoError(t, c.Status().Update(ctx, w0))
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(set), set))
	set.Status.ReadyReplicas = 0
	require.NoError(t, c.Status().Update(ctx, set))
	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "demo-00001")
		return s == "False" && reason == v1alpha1.ReasonUnschedulable
	}, wait, tick)
	got = revisionOf(t, c, "demo-00001")
	require.Equal(t, "group 0: worker pod demo-00001-group-0-1 Pending: Unschedulable: "+noGPU+"; "+want,
		got.Status.GetCondition(v1alpha1.RevisionConditionReady).Message)

	// A pod change alone (no set status change): group 1's worker crashes
	// instead. The revision sees it through its pod watch.
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(worker1), worker1))
	worker1.Status = corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "engine",
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 10s"}}}}}
	require.NoError(t, c.Status().Update(ctx, worker1))
	require.Eventually(t, func() bool {
		got := revisionOf(t, c, "demo-00001")
		ch := got.Status.GetCondition(v1alpha1.RevisionConditionContainerHealthy)
		return ch != nil && ch.IsFalse() && ch.Reason == v1alpha1.ReasonEngineFailed &&
			ch.Message == "group 1: worker pod demo-00001-group-1-1 Running: CrashLoopBackOff: container engine keeps crashing: back-off 10s"
	}, wait, tick)

	// The forged pods never showed, here or in the other revision.
	for _, name := range []string{"demo-00001", "demo-00002"} {
		got := revisionOf(t, c, name)
		for _, cond := range got.Status.Conditions {
			require.NotContains(t, cond.Message, "forged", "%s %s", name, cond.Type)
		}
		for _, g := range got.Status.Groups {
			require.NotContains(t, strings.Join(g.NotReady, "\n"), "forged", name)
		}
	}
	require.Equal(t, []string{"group 0: no leader pod demo-00002-group-0 yet"}, revisionOf(t, c, "demo-00002").Status.Groups[0].NotReady)
}

// The ModelService CRD refuses malformed and huge topology keys, on the
// template and on a role, naming the field; a label key passes.
func TestTopologyKeyCRDValidation(t *testing.T) {
	c := kubetest.Client(t, kubetest.Start(t))
	ctx := context.Background()
	service := func(mutate func(*v1alpha1.ModelService)) *v1alpha1.ModelService {
		ms := groupedService("llama")
		mutate(ms)
		return ms
	}
	require.NoError(t, c.Create(ctx, service(func(ms *v1alpha1.ModelService) {
		ms.Spec.Template.TopologyKey = "topology.kubernetes.io/zone"
	}), client.DryRunAll))
	for name, tc := range map[string]struct {
		mutate func(*v1alpha1.ModelService)
		want   string
	}{
		"space": {func(ms *v1alpha1.ModelService) { ms.Spec.Template.TopologyKey = "rack key" },
			"spec.template.topologyKey: Invalid value"},
		"huge": {func(ms *v1alpha1.ModelService) { ms.Spec.Template.TopologyKey = strings.Repeat("a", 100_000) },
			"spec.template.topologyKey: Too long"},
		"two slashes": {func(ms *v1alpha1.ModelService) { ms.Spec.Template.TopologyKey = "a/b/c" },
			"spec.template.topologyKey: Invalid value"},
		"name over 63": {func(ms *v1alpha1.ModelService) {
			ms.Spec.Template.TopologyKey = "example.com/" + strings.Repeat("b", 64)
		},
			"spec.template.topologyKey: Invalid value"},
		"a role's": {func(ms *v1alpha1.ModelService) {
			ms.Spec.Template.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{TopologyKey: "-rack"}}
		}, "spec.template.roles.decode.topologyKey: Invalid value"},
	} {
		t.Run(name, func(t *testing.T) {
			err := c.Create(ctx, service(tc.mutate), client.DryRunAll)
			require.ErrorContains(t, err, tc.want)
			require.Less(t, len(err.Error()), 4096, "the API server does not echo a huge key")
		})
	}
}

// LWS installed while the controller runs: a grouped revision waits with
// LeaderWorkerSetNotInstalled, then gets its set and follows the set's
// status (a watch added without a restart).
func TestLeaderWorkerSetInstalledLater(t *testing.T) {
	cfg := kubetest.Start(t)
	c := startGroups(t, cfg)
	ctx := context.Background()
	require.NoError(t, c.Create(ctx, groupedRevision("llama-00001", 1)))
	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "llama-00001")
		return s == "False" && reason == ReasonLeaderWorkerSetNotInstalled
	}, wait, tick)
	msg := revisionOf(t, c, "llama-00001").Status.GetCondition(v1alpha1.RevisionConditionReady).Message
	require.Contains(t, msg, "the controller notices within 200ms")
	require.NotContains(t, msg, "restart")

	_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{kubetest.LWSCRD(t)}})
	require.NoError(t, err)
	set := &lwsv1.LeaderWorkerSet{}
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001-group"}, set) == nil
	}, wait, tick)
	require.Eventually(t, func() bool {
		s, reason := readyOf(t, c, "llama-00001")
		return s == "Unknown" && reason == v1alpha1.ReasonDeploying
	}, wait, tick)
	// Only the watch tells the reconciler about the set's status.
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(set), set))
	set.Status.Replicas, set.Status.ReadyReplicas = 1, 1
	require.NoError(t, c.Status().Update(ctx, set))
	require.Eventually(t, func() bool {
		s, _ := readyOf(t, c, "llama-00001")
		return s == "True"
	}, wait, tick)
}

// podGroupCRD is a minimal CRD of a PodGroup kind, as Volcano's or
// scheduler-plugins' serve it (only the kind matters to Kvasir).
func podGroupCRD(t *testing.T, group, version string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), group+".yaml")
	crd := fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: podgroups.%[1]s}
spec:
  group: %[1]s
  names: {kind: PodGroup, listKind: PodGroupList, plural: podgroups, singular: podgroup}
  scope: Namespaced
  versions:
    - name: %[2]s
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`, group, version)
	require.NoError(t, os.WriteFile(path, []byte(crd), 0o600))
	return path
}

// Gang scheduling follows the cluster while the controller runs: with
// scheduler-plugins' coscheduling only, the groups' pods are gated and
// given to its scheduler, and the condition says so; once Volcano's
// PodGroup is served, the groups' pods are Volcano's (schedulerName on
// both templates, no gate), and the condition says whether LWS made
// PodGroups (a leader's annotation); when Volcano goes, the pods go back
// to coscheduling.
func TestGangSchedulingFollowsTheCluster(t *testing.T) {
	c, cfg := startCoscheduling(t)
	ctx := context.Background()
	require.NoError(t, c.Create(ctx, groupedRevision("llama-00001", 1)))

	gangOf := func() *v1alpha1.ModelRevision {
		return revisionOf(t, c, "llama-00001")
	}
	hasGang := func(reason string) func() bool {
		return func() bool {
			g := gangOf().Status.GetCondition(v1alpha1.RevisionConditionGangScheduled)
			return g != nil && g.Reason == reason
		}
	}
	require.Eventually(t, hasGang(v1alpha1.ReasonCoscheduling), wait, tick)
	msg := gangOf().Status.GetCondition(v1alpha1.RevisionConditionGangScheduled).Message
	require.Contains(t, msg, "serving.kvasir.dev/pod-group")
	require.Contains(t, msg, "scheduler scheduler-plugins-scheduler")
	key := client.ObjectKey{Namespace: "default", Name: "llama-00001-group"}
	type scheduling struct {
		leader, worker string
		gates          int
	}
	schedulers := func() scheduling {
		set := &lwsv1.LeaderWorkerSet{}
		require.NoError(t, c.Get(ctx, key, set))
		tmpl := set.Spec.LeaderWorkerTemplate
		return scheduling{tmpl.LeaderTemplate.Spec.SchedulerName, tmpl.WorkerTemplate.Spec.SchedulerName,
			len(tmpl.LeaderTemplate.Spec.SchedulingGates) + len(tmpl.WorkerTemplate.Spec.SchedulingGates)}
	}
	cosched := scheduling{"scheduler-plugins-scheduler", "scheduler-plugins-scheduler", 2}
	require.Equal(t, cosched, schedulers())

	volcano := podGroupCRD(t, "scheduling.volcano.sh", "v1beta1")
	_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{volcano}})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return schedulers() == scheduling{"volcano", "volcano", 0} }, wait, tick)
	require.Eventually(t, hasGang(v1alpha1.ReasonVolcano), wait, tick)

	// A leader LWS made without a PodGroup: its gang scheduling is not
	// set to Volcano.
	set := &lwsv1.LeaderWorkerSet{}
	require.NoError(t, c.Get(ctx, key, set))
	leader := playLWSPodSpec(t, c, set, func(p *corev1.Pod) { p.Spec.SchedulerName = "volcano" })
	require.Eventually(t, hasGang(v1alpha1.ReasonVolcanoPodGroupsMissing), wait, tick)
	require.Contains(t, gangOf().Status.GetCondition(v1alpha1.RevisionConditionGangScheduled).Message,
		"gangSchedulingManagement.schedulerProvider: volcano")
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(leader), leader))
	metav1.SetMetaDataAnnotation(&leader.ObjectMeta, VolcanoGroupAnnotation, "llama-00001-group-0-abc")
	require.NoError(t, c.Update(ctx, leader))
	require.Eventually(t, hasGang(v1alpha1.ReasonVolcano), wait, tick)

	// Volcano goes: back to coscheduling.
	require.NoError(t, envtest.UninstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{volcano}}))
	require.Eventually(t, func() bool { return schedulers() == cosched }, wait, tick)
	require.Eventually(t, hasGang(v1alpha1.ReasonCoscheduling), wait, tick)
}

// With coscheduling turned off (--coscheduling-scheduler-name empty), a
// cluster serving it changes nothing for the groups' pods, and the
// condition says why they are not gang-scheduled.
func TestCoschedulingTurnedOff(t *testing.T) {
	cfg := kubetest.StartWithLWS(t)
	_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{podGroupCRD(t, "scheduling.x-k8s.io", "v1alpha1")}})
	require.NoError(t, err)
	c := startGroups(t, cfg) // testResources: no coscheduling scheduler
	ctx := context.Background()
	require.NoError(t, c.Create(ctx, groupedRevision("llama-00001", 1)))
	require.Eventually(t, func() bool {
		g := revisionOf(t, c, "llama-00001").Status.GetCondition(v1alpha1.RevisionConditionGangScheduled)
		return g != nil && g.IsFalse() && g.Reason == v1alpha1.ReasonCoschedulingNotSupported &&
			strings.Contains(g.Message, "--coscheduling-scheduler-name is empty")
	}, wait, tick)
	set := &lwsv1.LeaderWorkerSet{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001-group"}, set))
	tmpl := set.Spec.LeaderWorkerTemplate
	for _, spec := range []corev1.PodSpec{tmpl.LeaderTemplate.Spec, tmpl.WorkerTemplate.Spec} {
		require.Empty(t, spec.SchedulerName)
		require.Empty(t, spec.SchedulingGates)
	}
}

// playLWSPodSpec is playLWSPod for group 0's leader, with its spec
// changed by mutate before it is made.
func playLWSPodSpec(t *testing.T, c client.Client, set *lwsv1.LeaderWorkerSet, mutate func(*corev1.Pod)) *corev1.Pod {
	t.Helper()
	labels := map[string]string{lwsv1.SetNameLabelKey: set.Name, lwsv1.GroupIndexLabelKey: "0", lwsv1.WorkerIndexLabelKey: "0"}
	for k, v := range set.Spec.LeaderWorkerTemplate.LeaderTemplate.Labels {
		labels[k] = v
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: set.Name + "-0", Namespace: set.Namespace, Labels: labels,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: set.Name,
			UID: "uid-" + types.UID(set.Name), Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "engine", Image: "sim"}}}}
	mutate(pod)
	require.NoError(t, c.Create(context.Background(), pod))
	return pod
}
