package revision

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// RBAC (make generate): a gated group's pods are patched (the pod-group
// label added, resources.SchedulingGatePodGroup removed: nothing else);
// coscheduling PodGroups are made and read, one per group, never listed,
// watched, changed or deleted (the garbage collector deletes a group's
// with its leader pod).
// +kubebuilder:rbac:groups="",resources=pods,verbs=patch
// +kubebuilder:rbac:groups=scheduling.x-k8s.io,resources=podgroups,verbs=get;create

// ReasonPodGroupConflict is the reason of the Warning event a revision
// gets when a group's coscheduling PodGroup name is taken by a PodGroup
// the controller did not make for that group: the group's pods stay
// gated.
const ReasonPodGroupConflict = "PodGroupConflict"

// staleRecheck is how soon a group whose name is still held by the
// PodGroup of its previous leader (which the garbage collector deletes)
// is looked at again.
const staleRecheck = time.Second

// coschedulingPodGroup is scheduler-plugins' PodGroup kind, used as
// unstructured objects (no dependency on scheduler-plugins' module).
var coschedulingPodGroup = schema.GroupVersionKind{Group: "scheduling.x-k8s.io", Version: "v1alpha1", Kind: podGroupKind}

// releaseOutcome is what one pass releasing a revision's gated pods found.
type releaseOutcome struct {
	// forbidden is the first refusal of the API server: the controller's
	// role lacks the rights to make PodGroups or patch pods
	// (config/201-controller-roles.yaml).
	forbidden error
	// stale: a group waits for the garbage collector to delete its
	// previous leader's PodGroup.
	stale bool
}

// releaseGatedPods gives each group of the revision's LeaderWorkerSets
// whose pods carry resources.SchedulingGatePodGroup its coscheduling
// PodGroup, then labels the pods with it and removes the gate (one patch
// a pod). Only pods that are as LWS makes them count (groupPods: a pod
// forged to look like a group's is left alone, whatever it carries), and
// a group is released only whole: its size pods all made and none being
// deleted (LWS makes a group's workers with its leader when there is no
// topology key, the only case where the gate is set).
//
// A group's PodGroup is <set>-<group index>, minMember the group's pods,
// controlled by the group's leader pod, so that the garbage collector
// deletes it with the leader: when LWS recreates a group (a pod failed:
// RecreateGroupOnPodRestart deletes the leader, foreground), the new
// group gets a new PodGroup; the old one, while the collector has not
// removed it yet, holds the new group (looked at again after
// staleRecheck), never admits it. A PodGroup of that name controlled by
// anything else is not used: the group's pods stay gated, and the
// revision gets a Warning event.
func (r *Reconciler) releaseGatedPods(ctx context.Context, rev *v1alpha1.ModelRevision, all []workload) (releaseOutcome, error) {
	var out releaseOutcome
	for _, w := range all {
		if w.set == nil {
			continue
		}
		list := &corev1.PodList{}
		if err := r.Client.List(ctx, list, client.InNamespace(rev.Namespace), client.MatchingLabels{
			v1alpha1.LabelRevision: rev.Name, lwsv1.SetNameLabelKey: w.set.Name}); err != nil {
			return out, fmt.Errorf("listing the pods of leader worker set %s: %w", w.set.Name, err)
		}
		for g, pods := range groupPods(list.Items, w.set.Name, w.role, w.size) {
			if !releasable(pods, w.size) {
				continue
			}
			done, err := r.releaseGroup(ctx, rev, w.set.Name, g, w.size, pods, &out)
			if err != nil {
				return out, err
			}
			if !done {
				return out, nil // forbidden: the next pass tries again
			}
		}
	}
	return out, nil
}

// releasable reports whether a group (its pods by worker index, as
// groupPods keeps them) is whole, not being deleted, and has a pod still
// held by the gate.
func releasable(pods []groupPod, size int32) bool {
	if len(pods) != int(size) {
		return false
	}
	gated := false
	for _, gp := range pods {
		if gp.pod.DeletionTimestamp != nil {
			return false
		}
		gated = gated || hasGate(gp.pod)
	}
	return gated
}

// hasGate reports whether a pod carries resources.SchedulingGatePodGroup.
func hasGate(p *corev1.Pod) bool {
	for _, g := range p.Spec.SchedulingGates {
		if g.Name == resources.SchedulingGatePodGroup {
			return true
		}
	}
	return false
}

// releaseGroup makes sure group g of set has its PodGroup, then releases
// its gated pods. done is false when the API server refused (out.forbidden
// says so) and the pass should stop.
func (r *Reconciler) releaseGroup(ctx context.Context, rev *v1alpha1.ModelRevision, set string, g int, size int32,
	pods []groupPod, out *releaseOutcome) (done bool, err error) {
	leader := pods[0].pod // worker 0: releasable checked the group is whole
	name := fmt.Sprintf("%s-%d", set, g)
	if errs := validation.IsValidLabelValue(name); len(errs) > 0 {
		// The leader's own name; LWS's StatefulSet labels keep it short.
		r.Log.Warn("a group's PodGroup name is not a label value: its pods stay gated",
			slog.String("revision", rev.Name), slog.String("podGroup", clipLine(name)), slog.String("why", strings.Join(errs, "; ")))
		return true, nil
	}
	switch state, err := r.ensurePodGroup(ctx, rev, name, leader, size); {
	case apierrs.IsForbidden(err):
		out.forbidden = err
		return false, nil
	case meta.IsNoMatchError(err):
		return true, nil // coscheduling went away: its pods are rolled by LWS
	case err != nil:
		return false, err
	case state == podGroupStale:
		out.stale = true
		return true, nil
	case state == podGroupForeign:
		r.Log.Warn("a group's PodGroup name is taken by a PodGroup not made for it: its pods stay gated",
			slog.String("revision", rev.Name), slog.String("namespace", rev.Namespace), slog.String("podGroup", name))
		r.event(rev, nil, corev1.EventTypeWarning, ReasonPodGroupConflict,
			"PodGroup %s is not the one of group %d of leader worker set %s (its controller is not leader pod %s): "+
				"the group's pods stay gated until it is removed", name, g, set, leader.Name)
		return true, nil
	}
	for _, gp := range pods {
		if !hasGate(gp.pod) {
			continue
		}
		switch err := r.ungate(ctx, gp.pod, name); {
		case apierrs.IsForbidden(err):
			out.forbidden = err
			return false, nil
		case apierrs.IsNotFound(err), apierrs.IsConflict(err), apierrs.IsInvalid(err):
			// The pod changed under the patch's tests (deleted, made
			// again, its gates changed): its next event brings it back.
			r.Log.Debug("pod changed before it was released", slog.String("pod", gp.pod.Name), slog.Any("error", err))
		case err != nil:
			return false, fmt.Errorf("releasing pod %s: %w", gp.pod.Name, err)
		}
	}
	return true, nil
}

// podGroupState is what ensurePodGroup found.
type podGroupState int

const (
	// podGroupReady: the group's PodGroup exists, controlled by its
	// current leader.
	podGroupReady podGroupState = iota
	// podGroupStale: the name is held by the PodGroup of a previous leader
	// of the group (a pod of the same name, since deleted).
	podGroupStale
	// podGroupForeign: the name is held by a PodGroup that no leader of
	// the group controls.
	podGroupForeign
)

// ensurePodGroup makes the coscheduling PodGroup name for a group whose
// leader is leader (minMember size, controlled by the leader pod, no
// blockOwnerDeletion, which would need the pods' finalizers right), or
// says whose the existing one is. PodGroups are read from the API server
// (unstructured objects are not cached).
func (r *Reconciler) ensurePodGroup(ctx context.Context, rev *v1alpha1.ModelRevision, name string, leader *corev1.Pod,
	size int32) (podGroupState, error) {
	have := &unstructured.Unstructured{}
	have.SetGroupVersionKind(coschedulingPodGroup)
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: leader.Namespace, Name: name}, have)
	switch {
	case err == nil:
		return podGroupOwner(have, leader), nil
	case !apierrs.IsNotFound(err):
		return 0, fmt.Errorf("getting pod group %s: %w", name, err)
	}
	pg := makePodGroup(rev, name, leader, size)
	if err := r.Client.Create(ctx, pg); err != nil {
		if apierrs.IsAlreadyExists(err) {
			return podGroupStale, nil // made meanwhile: looked at again soon
		}
		return 0, fmt.Errorf("creating pod group %s: %w", name, err)
	}
	r.event(rev, pg, corev1.EventTypeNormal, "Created", "Created pod group %s for leader pod %s", name, leader.Name)
	return podGroupReady, nil
}

// makePodGroup is a group's coscheduling PodGroup: minMember its pods,
// labelled with the revision, controlled by its leader pod.
func makePodGroup(rev *v1alpha1.ModelRevision, name string, leader *corev1.Pod, size int32) *unstructured.Unstructured {
	pg := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"minMember": int64(size)}}}
	pg.SetGroupVersionKind(coschedulingPodGroup)
	pg.SetNamespace(leader.Namespace)
	pg.SetName(name)
	pg.SetLabels(map[string]string{v1alpha1.LabelRevision: rev.Name, lwsv1.SetNameLabelKey: leader.Labels[lwsv1.SetNameLabelKey]})
	pg.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: leader.Name, UID: leader.UID,
		Controller: ptr.To(true)}})
	return pg
}

// podGroupOwner says whose an existing PodGroup is, for the group led by
// leader.
func podGroupOwner(pg *unstructured.Unstructured, leader *corev1.Pod) podGroupState {
	ref := metav1.GetControllerOfNoCopy(pg)
	switch {
	case ref == nil || ref.APIVersion != "v1" || ref.Kind != "Pod" || ref.Name != leader.Name:
		return podGroupForeign
	case ref.UID != leader.UID:
		return podGroupStale
	}
	return podGroupReady
}

// ungate labels a pod with its group's PodGroup and removes
// resources.SchedulingGatePodGroup, in one JSON patch whose tests make
// it apply only to this pod (its UID) with the gate where it was seen.
func (r *Reconciler) ungate(ctx context.Context, p *corev1.Pod, podGroup string) error {
	patch, err := ungatePatch(p, podGroup)
	if err != nil {
		return err
	}
	target := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}}
	return r.Client.Patch(ctx, target, client.RawPatch(types.JSONPatchType, patch))
}

// jsonPatchOp is one operation of a JSON patch (RFC 6902).
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// ungatePatch is ungate's JSON patch: test the UID and the gate, remove
// the gate, add the label (the pod's labels exist: groupPods kept it by
// them).
func ungatePatch(p *corev1.Pod, podGroup string) ([]byte, error) {
	idx := -1
	for i, g := range p.Spec.SchedulingGates {
		if g.Name == resources.SchedulingGatePodGroup {
			idx = i
			break
		}
	}
	if idx < 0 || p.UID == "" {
		return nil, fmt.Errorf("pod %s: no gate %s or no UID", p.Name, resources.SchedulingGatePodGroup)
	}
	gate := fmt.Sprintf("/spec/schedulingGates/%d", idx)
	label := "/metadata/labels/" + strings.ReplaceAll(resources.CoschedulingPodGroupLabel, "/", "~1")
	return json.Marshal([]jsonPatchOp{
		{Op: "test", Path: "/metadata/uid", Value: string(p.UID)},
		{Op: "test", Path: gate + "/name", Value: resources.SchedulingGatePodGroup},
		{Op: "remove", Path: gate},
		{Op: "add", Path: label, Value: podGroup},
	})
}

// coschedulingState is what the GangScheduled condition says of
// coscheduling, for a revision in a cluster that serves it and not
// Volcano.
type coschedulingState struct {
	// scheduler is the coscheduling scheduler's name, "" when the
	// controller turned coscheduling off.
	scheduler string
	// topologyRole is a grouped role with a topology key (not
	// coscheduled), "" when none.
	topologyRole string
	// release is this pass's release of gated pods.
	release releaseOutcome
}

// newCoschedulingState is the coscheduling state of a revision after a
// release pass.
func newCoschedulingState(rev *v1alpha1.ModelRevision, scheduler string, release releaseOutcome) coschedulingState {
	st := coschedulingState{scheduler: scheduler, release: release}
	for _, role := range names.Roles(rev) {
		if hasGroups(rev, role) && rev.Spec.RoleTopologyKey(role) != "" {
			st.topologyRole = fleet.RoleLabel(role)
			break
		}
	}
	return st
}
