package revision

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// coschedResources is testResources with scheduler-plugins' scheduler
// named, as the controller's flag does by default.
var coschedResources = func() resources.Config {
	c := testResources
	c.CoschedulingSchedulerName = resources.DefaultCoschedulingSchedulerName
	return c
}()

// startCoscheduling runs the revision reconciler as the controller does
// (its cache strips pods) against a cluster serving LWS's and
// coscheduling's PodGroup CRDs.
func startCoscheduling(t *testing.T) (client.Client, *rest.Config) {
	t.Helper()
	cfg := kubetest.StartWithLWS(t)
	_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{podGroupCRD(t, "scheduling.x-k8s.io", "v1alpha1")}})
	require.NoError(t, err)
	t.Cleanup(kubetest.Manager(t, cfg, func(mgr ctrl.Manager) error {
		return (&Reconciler{Client: mgr.GetClient(), Events: mgr.GetEventRecorder("kvasir-controller"),
			Resources: coschedResources, APIRecheck: testRecheck}).SetupWithManager(mgr)
	}, func(o *ctrl.Options) { o.Cache = reconciler.CacheOptions("") }))
	return kubetest.Client(t, cfg), cfg
}

// playGatedPod creates the pod LWS would make for group g, index w (0:
// the leader) of set, from the set's templates, scheduling gates and
// scheduler included; mutate, when not nil, changes it first.
func playGatedPod(t *testing.T, c client.Client, set *lwsv1.LeaderWorkerSet, g, w int, mutate func(*corev1.Pod)) *corev1.Pod {
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
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "engine", Image: "sim", Args: []string{"--secret-arg"}}},
			SchedulerName: tmpl.Spec.SchedulerName, SchedulingGates: tmpl.Spec.SchedulingGates}}
	if mutate != nil {
		mutate(pod)
	}
	require.NoError(t, c.Create(context.Background(), pod))
	return pod
}

// podGroup reads a coscheduling PodGroup, nil when there is none.
func podGroup(t *testing.T, c client.Client, name string) *unstructured.Unstructured {
	t.Helper()
	pg := &unstructured.Unstructured{}
	pg.SetGroupVersionKind(coschedulingPodGroup)
	err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, pg)
	if apierrs.IsNotFound(err) {
		return nil
	}
	require.NoError(t, err)
	return pg
}

// released reports whether pod name was released into PodGroup group:
// labelled with it, no gate left; it fails the test when the pod lost its
// gate any other way.
func released(t *testing.T, c client.Client, name, group string) bool {
	t.Helper()
	p := &corev1.Pod{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, p))
	if hasGate(p) {
		require.NotContains(t, p.Labels, resources.CoschedulingPodGroupLabel, "labelled only when released")
		return false
	}
	require.Equal(t, group, p.Labels[resources.CoschedulingPodGroupLabel], name)
	require.Empty(t, p.Spec.SchedulingGates, name)
	return true
}

// untouched requires pod name to be as it was made: its gates and labels.
func untouched(t *testing.T, c client.Client, made *corev1.Pod) {
	t.Helper()
	p := &corev1.Pod{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKeyFromObject(made), p))
	require.Equal(t, made.Spec.SchedulingGates, p.Spec.SchedulingGates, made.Name)
	require.Equal(t, made.Labels, p.Labels, made.Name)
}

// A controller's podGroupOf is the PodGroup's controller UID and
// minMember.
func podGroupOf(t *testing.T, pg *unstructured.Unstructured) (types.UID, int64) {
	t.Helper()
	ref := metav1.GetControllerOf(pg)
	require.NotNil(t, ref)
	require.Equal(t, "Pod", ref.Kind)
	n, _, err := unstructured.NestedInt64(pg.Object, "spec", "minMember")
	require.NoError(t, err)
	return ref.UID, n
}

// With scheduler-plugins' coscheduling served (and no Volcano), a
// grouped revision's set holds its pods behind the pod-group gate; the
// test plays LWS. Each whole group gets its PodGroup (<set>-<index>,
// minMember 2, controlled by its leader pod), and its pods are labelled
// with it and ungated; a group not whole yet stays gated. Pods forged to
// look like a group's (another owner, a huge group index, a name of their
// own) and pods without the gate are left as they are. A group LWS makes
// again (new pods, new UIDs) waits while its previous leader's PodGroup
// is there (the garbage collector, played by the test, deletes it with
// that leader) and then gets a new one; a PodGroup of the name made by
// someone else keeps the group gated, with a Warning event.
func TestCoschedulingReleasesGroups(t *testing.T) {
	c, _ := startCoscheduling(t)
	ctx := context.Background()
	rev := groupedRevision("llama-00001", 2)
	require.NoError(t, c.Create(ctx, rev))
	set := &lwsv1.LeaderWorkerSet{}
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001-group"}, set) == nil
	}, wait, tick)
	tmpl := set.Spec.LeaderWorkerTemplate
	for _, spec := range []corev1.PodSpec{tmpl.LeaderTemplate.Spec, tmpl.WorkerTemplate.Spec} {
		require.Equal(t, "scheduler-plugins-scheduler", spec.SchedulerName)
		require.Equal(t, []corev1.PodSchedulingGate{{Name: "serving.kvasir.dev/pod-group"}}, spec.SchedulingGates)
	}
	require.Eventually(t, func() bool {
		g := revisionOf(t, c, "llama-00001").Status.GetCondition(v1alpha1.RevisionConditionGangScheduled)
		return g != nil && g.IsTrue() && g.Reason == v1alpha1.ReasonCoscheduling
	}, wait, tick)
	require.Contains(t, revisionOf(t, c, "llama-00001").Status.GetCondition(v1alpha1.RevisionConditionGangScheduled).Message,
		"scheduler scheduler-plugins-scheduler")

	// Forged and ungated pods first, then group 1's leader alone, then
	// group 0 whole: once group 0 is released, the reconciler has seen
	// them all (one ordered watch of pods).
	forged := []*corev1.Pod{
		playGatedPod(t, c, set, 2, 1, func(p *corev1.Pod) { p.OwnerReferences[0].Name = "someone-else" }),
		playGatedPod(t, c, set, 3, 0, func(p *corev1.Pod) {
			p.Name = set.Name + "-99999999999999999999"
			p.Labels[lwsv1.GroupIndexLabelKey] = "99999999999999999999"
		}),
		playGatedPod(t, c, set, 4, 0, func(p *corev1.Pod) {
			p.Name = set.Name + "-x4"
			p.Labels[lwsv1.GroupIndexLabelKey] = "0x4"
		}),
		playGatedPod(t, c, set, 5, 0, func(p *corev1.Pod) { p.Name = "forged-leader" }),
		playGatedPod(t, c, set, 6, 0, func(p *corev1.Pod) { p.OwnerReferences = nil }),
	}
	plain := []*corev1.Pod{ // group 7, made whole before the gate
		playGatedPod(t, c, set, 7, 0, func(p *corev1.Pod) { p.Spec.SchedulingGates = nil }),
		playGatedPod(t, c, set, 7, 1, func(p *corev1.Pod) { p.Spec.SchedulingGates = nil }),
	}
	// Group 2's leader, whose only worker is the forged one: not whole.
	forged = append(forged, playGatedPod(t, c, set, 2, 0, nil))
	leader1 := playGatedPod(t, c, set, 1, 0, nil)
	playGatedPod(t, c, set, 0, 0, nil)
	playGatedPod(t, c, set, 0, 1, nil)
	require.Eventually(t, func() bool {
		return released(t, c, "llama-00001-group-0", "llama-00001-group-0") &&
			released(t, c, "llama-00001-group-0-1", "llama-00001-group-0")
	}, wait, tick)
	require.False(t, released(t, c, leader1.Name, ""), "group 1 is not whole: its leader waits")
	require.Nil(t, podGroup(t, c, "llama-00001-group-1"))
	pg0 := podGroup(t, c, "llama-00001-group-0")
	require.NotNil(t, pg0)
	leader0 := &corev1.Pod{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001-group-0"}, leader0))
	uid, minMember := podGroupOf(t, pg0)
	require.Equal(t, leader0.UID, uid, "controlled by the group's leader pod")
	require.Equal(t, int64(2), minMember)
	require.Equal(t, "llama-00001", pg0.GetLabels()[v1alpha1.LabelRevision])
	require.Equal(t, []string{"--secret-arg"}, leader0.Spec.Containers[0].Args, "the patch left the rest of the pod (the cache strips it)")

	// Group 1's worker comes: the group is released.
	playGatedPod(t, c, set, 1, 1, nil)
	require.Eventually(t, func() bool {
		return released(t, c, "llama-00001-group-1", "llama-00001-group-1") &&
			released(t, c, "llama-00001-group-1-1", "llama-00001-group-1")
	}, wait, tick)
	pg1 := podGroup(t, c, "llama-00001-group-1")
	require.NotNil(t, pg1)
	_, minMember = podGroupOf(t, pg1)
	require.Equal(t, int64(2), minMember)

	for _, p := range append(forged, plain...) {
		untouched(t, c, p)
	}
	pgs := &unstructured.UnstructuredList{}
	pgs.SetGroupVersionKind(coschedulingPodGroup.GroupVersion().WithKind("PodGroupList"))
	require.NoError(t, c.List(ctx, pgs, client.InNamespace("default")))
	var names []string
	for _, pg := range pgs.Items {
		names = append(names, pg.GetName())
	}
	require.ElementsMatch(t, []string{"llama-00001-group-0", "llama-00001-group-1"}, names, "none for forged or ungated pods")

	// LWS makes group 0 again: new pods, new UIDs. The previous leader's
	// PodGroup holds it (the revision's status shows the new leader, so
	// the reconciler has seen it)...
	for _, name := range []string{"llama-00001-group-0-1", "llama-00001-group-0"} {
		require.NoError(t, c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}},
			client.GracePeriodSeconds(0)))
		require.Eventually(t, func() bool {
			return apierrs.IsNotFound(c.Get(ctx, client.ObjectKey{Namespace: "default", Name: name}, &corev1.Pod{}))
		}, wait, tick)
	}
	newLeader := playGatedPod(t, c, set, 0, 0, nil)
	newLeader.Status = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled,
		Status: corev1.ConditionFalse, Reason: "SchedulingGated", Message: "made again"}}}
	require.NoError(t, c.Status().Update(ctx, newLeader))
	playGatedPod(t, c, set, 0, 1, nil)
	require.NotEqual(t, leader0.UID, newLeader.UID)
	require.Eventually(t, func() bool {
		for _, g := range revisionOf(t, c, "llama-00001").Status.Groups {
			if strings.Contains(strings.Join(g.NotReady, "\n"), "SchedulingGated: made again") {
				return true
			}
		}
		return false
	}, wait, tick)
	require.False(t, released(t, c, "llama-00001-group-0", ""), "the stale PodGroup admits no new pod")
	require.False(t, released(t, c, "llama-00001-group-0-1", ""))
	uid, _ = podGroupOf(t, podGroup(t, c, "llama-00001-group-0"))
	require.Equal(t, leader0.UID, uid, "the controller deletes nothing")
	// ...until the garbage collector deletes it with its leader.
	require.NoError(t, c.Delete(ctx, pg0))
	require.Eventually(t, func() bool {
		return released(t, c, "llama-00001-group-0", "llama-00001-group-0") &&
			released(t, c, "llama-00001-group-0-1", "llama-00001-group-0")
	}, wait, tick)
	uid, minMember = podGroupOf(t, podGroup(t, c, "llama-00001-group-0"))
	require.Equal(t, newLeader.UID, uid, "a new PodGroup, the new leader's")
	require.Equal(t, int64(2), minMember)

	// A PodGroup someone else made under group 8's name: the group stays
	// gated, and the revision says why in an event.
	foreign := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"minMember": int64(1)}}}
	foreign.SetGroupVersionKind(coschedulingPodGroup)
	foreign.SetNamespace("default")
	foreign.SetName("llama-00001-group-8")
	require.NoError(t, c.Create(ctx, foreign))
	g8 := []*corev1.Pod{playGatedPod(t, c, set, 8, 0, nil), playGatedPod(t, c, set, 8, 1, nil)}
	require.Eventually(t, func() bool {
		evs := &eventsv1.EventList{}
		require.NoError(t, c.List(ctx, evs, client.InNamespace("default")))
		for _, e := range evs.Items {
			if e.Reason == ReasonPodGroupConflict && e.Type == corev1.EventTypeWarning && e.Regarding.Name == "llama-00001" &&
				strings.Contains(e.Note, "PodGroup llama-00001-group-8") {
				return true
			}
		}
		return false
	}, wait, tick)
	for _, p := range g8 {
		untouched(t, c, p)
	}
	require.Empty(t, podGroup(t, c, "llama-00001-group-8").GetOwnerReferences(), "left as it was")
}

// A grouped role with a topology key is not coscheduled (LWS places its
// leaders before it makes their workers): no gate, the default scheduler,
// and the condition says so, naming the role.
func TestCoschedulingNotWithATopologyKey(t *testing.T) {
	c, _ := startCoscheduling(t)
	ctx := context.Background()
	rev := groupedRevision("llama-00001", 1)
	rev.Spec.TopologyKey = "example.com/rack"
	require.NoError(t, c.Create(ctx, rev))
	require.Eventually(t, func() bool {
		g := revisionOf(t, c, "llama-00001").Status.GetCondition(v1alpha1.RevisionConditionGangScheduled)
		return g != nil && g.IsFalse() && g.Reason == v1alpha1.ReasonCoschedulingNotSupported &&
			strings.Contains(g.Message, "role unified has a topologyKey")
	}, wait, tick)
	set := &lwsv1.LeaderWorkerSet{}
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "llama-00001-group"}, set))
	tmpl := set.Spec.LeaderWorkerTemplate
	for _, spec := range []corev1.PodSpec{tmpl.LeaderTemplate.Spec, tmpl.WorkerTemplate.Spec} {
		require.Empty(t, spec.SchedulerName)
		require.Empty(t, spec.SchedulingGates)
	}
}
