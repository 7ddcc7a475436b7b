package revision

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// gated is p held by the pod-group gate (after another gate when first
// is not "").
func gated(p corev1.Pod, first string) corev1.Pod {
	if first != "" {
		p.Spec.SchedulingGates = append(p.Spec.SchedulingGates, corev1.PodSchedulingGate{Name: first})
	}
	p.Spec.SchedulingGates = append(p.Spec.SchedulingGates, corev1.PodSchedulingGate{Name: resources.SchedulingGatePodGroup})
	p.UID = "uid-" + "x"
	return p
}

// A group is released only whole, none of its pods being deleted, and
// while one of them is still gated; only pods as LWS makes them count,
// so a forged or malformed pod neither completes a group nor is released.
func TestReleasable(t *testing.T) {
	const set = "llama-00001-group"
	pod := func(g, w int, gate bool) corev1.Pod {
		p := lwsPod(set, fleet.RoleLabel(fleet.RoleUnified), g, w, false)
		if gate {
			p = gated(p, "")
		}
		return p
	}
	deleting := pod(0, 1, true)
	deleting.DeletionTimestamp = &metav1.Time{}
	hugeIndex := pod(0, 1, true)
	hugeIndex.Labels["leaderworkerset.sigs.k8s.io/group-index"] = "99999999999999999999999999"
	hugeIndex.Name = set + "-99999999999999999999999999-1"
	malformed := pod(0, 1, true)
	malformed.Labels["leaderworkerset.sigs.k8s.io/worker-index"] = "-1"
	forgedOwner := pod(0, 1, true)
	forgedOwner.OwnerReferences[0].Name = "someone-else"
	outOfGroup := pod(0, 2, true) // worker index at size: not a pod of a group of 2
	for name, tc := range map[string]struct {
		pods []corev1.Pod
		want map[int]bool
	}{
		"whole and gated":          {pods: []corev1.Pod{pod(0, 0, true), pod(0, 1, true)}, want: map[int]bool{0: true}},
		"one still gated":          {pods: []corev1.Pod{pod(0, 0, false), pod(0, 1, true)}, want: map[int]bool{0: true}},
		"released":                 {pods: []corev1.Pod{pod(0, 0, false), pod(0, 1, false)}, want: map[int]bool{0: false}},
		"leader alone":             {pods: []corev1.Pod{pod(0, 0, true)}, want: map[int]bool{0: false}},
		"a pod being deleted":      {pods: []corev1.Pod{pod(0, 0, true), deleting}, want: map[int]bool{0: false}},
		"huge group index":         {pods: []corev1.Pod{pod(0, 0, true), hugeIndex}, want: map[int]bool{0: false}},
		"malformed worker index":   {pods: []corev1.Pod{pod(0, 0, true), malformed}, want: map[int]bool{0: false}},
		"forged worker's owner":    {pods: []corev1.Pod{pod(0, 0, true), forgedOwner}, want: map[int]bool{0: false}},
		"worker index past size":   {pods: []corev1.Pod{pod(0, 0, true), outOfGroup}, want: map[int]bool{0: false}},
		"two groups, one is whole": {pods: []corev1.Pod{pod(0, 0, true), pod(0, 1, true), pod(1, 0, true)}, want: map[int]bool{0: true, 1: false}},
	} {
		t.Run(name, func(t *testing.T) {
			groups := groupPods(tc.pods, set, fleet.RoleUnified, 2)
			got := map[int]bool{}
			for g, ps := range groups {
				got[g] = releasable(ps, 2)
			}
			require.Equal(t, tc.want, got)
		})
	}
}

// The patch touches the gate it tested and the pod-group label, of the
// pod whose UID it tested, and nothing else.
func TestUngatePatch(t *testing.T) {
	p := gated(lwsPod("s", fleet.RoleUnified, 3, 1, false), "example.com/other")
	raw, err := ungatePatch(&p, "s-3")
	require.NoError(t, err)
	var ops []map[string]any
	require.NoError(t, json.Unmarshal(raw, &ops))
	require.Equal(t, []map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": "uid-x"},
		{"op": "test", "path": "/spec/schedulingGates/1/name", "value": "serving.kvasir.dev/pod-group"},
		{"op": "remove", "path": "/spec/schedulingGates/1"},
		{"op": "add", "path": "/metadata/labels/scheduling.x-k8s.io~1pod-group", "value": "s-3"},
	}, ops)

	plain := lwsPod("s", fleet.RoleUnified, 0, 0, false)
	_, err = ungatePatch(&plain, "s-0")
	require.Error(t, err, "no gate: no patch")
	noUID := gated(plain, "")
	noUID.UID = ""
	_, err = ungatePatch(&noUID, "s-0")
	require.Error(t, err, "no UID to test: no patch")
}

// A PodGroup is the group's when its controller is the group's current
// leader pod; the previous leader's (same name, another UID) is stale;
// anything else is foreign.
func TestPodGroupOwner(t *testing.T) {
	leader := lwsPod("s", fleet.RoleUnified, 0, 0, false)
	leader.UID = "leader-2"
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "llama-00001", Namespace: "default"}}
	made := makePodGroup(rev, "s-0", &leader, 4)
	require.Equal(t, podGroupReady, podGroupOwner(made, &leader))
	require.Equal(t, "scheduling.x-k8s.io/v1alpha1", made.GetAPIVersion())
	require.Equal(t, "PodGroup", made.GetKind())
	require.Equal(t, map[string]string{v1alpha1.LabelRevision: "llama-00001", "leaderworkerset.sigs.k8s.io/name": "s"}, made.GetLabels())
	minMember, ok, err := unstructured.NestedInt64(made.Object, "spec", "minMember")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, int64(4), minMember)
	ref := made.GetOwnerReferences()
	require.Len(t, ref, 1)
	require.Nil(t, ref[0].BlockOwnerDeletion, "that would need pods/finalizers")
	require.Equal(t, metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "s-0", UID: "leader-2", Controller: ptr.To(true)}, ref[0])

	owned := func(ref *metav1.OwnerReference) *unstructured.Unstructured {
		pg := &unstructured.Unstructured{}
		if ref != nil {
			pg.SetOwnerReferences([]metav1.OwnerReference{*ref})
		}
		return pg
	}
	for name, tc := range map[string]struct {
		ref  *metav1.OwnerReference
		want podGroupState
	}{
		"previous leader": {ref: &metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "s-0", UID: "leader-1", Controller: ptr.To(true)}, want: podGroupStale},
		"no owner":        {want: podGroupForeign},
		"not controller":  {ref: &metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "s-0", UID: "leader-2"}, want: podGroupForeign},
		"another pod":     {ref: &metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "s-1", UID: "leader-2", Controller: ptr.To(true)}, want: podGroupForeign},
		"not a pod":       {ref: &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "s-0", UID: "leader-2", Controller: ptr.To(true)}, want: podGroupForeign},
	} {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.want, podGroupOwner(owned(tc.ref), &leader))
		})
	}
}
