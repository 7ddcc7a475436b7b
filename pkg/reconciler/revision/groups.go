package revision

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// VolcanoGroupAnnotation is the annotation by which a pod names its
// Volcano PodGroup; LWS's pod webhook sets it on a group's pods when LWS
// runs with gangSchedulingManagement.schedulerProvider: volcano.
const VolcanoGroupAnnotation = "scheduling.k8s.io/group-name"

// maxLineBytes bounds one group's line: a pod's status messages are
// written by the scheduler and the kubelet, or by whoever may write pod
// status in the namespace.
const maxLineBytes = 1024

// groupPod is a pod of a serving group: its group's index and its index
// in the group (0, the leader; 1 to size-1, the workers).
type groupPod struct {
	pod           *corev1.Pod
	group, worker int
}

// groupPods keeps the pods of set's groups (a role's LeaderWorkerSet of
// groups of size pods) that are as LeaderWorkerSet makes them, by group
// index, each group's sorted by worker index. A pod counts only when it
// has set's name label (leaderworkerset.sigs.k8s.io/name), canonical
// group and worker index labels (worker below size), the name LWS gives
// it (<set>-<group> for a leader, <set>-<group>-<worker> for a worker),
// the role's label (serving.kvasir.dev/role on a leader,
// serving.kvasir.dev/group-worker on a worker) and, as its controller, the
// StatefulSet LWS makes for it (<set> for leaders, <set>-<group> for a
// group's workers). Other pods, whatever labels they claim, are ignored.
// Whoever may create pods in the namespace can still forge all of that
// (owner references are not checked against the StatefulSets' UIDs): the
// checks keep stray and copied pods out, not a namespace's own users.
func groupPods(pods []corev1.Pod, set, role string, size int32) map[int][]groupPod {
	out := map[int][]groupPod{}
	for i := range pods {
		p := &pods[i]
		if p.Labels[lwsv1.SetNameLabelKey] != set {
			continue
		}
		g, gok := canonicalIndex(p.Labels[lwsv1.GroupIndexLabelKey])
		w, wok := canonicalIndex(p.Labels[lwsv1.WorkerIndexLabelKey])
		if !gok || !wok || w >= int(size) {
			continue
		}
		name, owner, roleKey := fmt.Sprintf("%s-%d", set, g), set, v1alpha1.LabelRole
		if w > 0 {
			name, owner, roleKey = fmt.Sprintf("%s-%d-%d", set, g, w), fmt.Sprintf("%s-%d", set, g), resources.LabelGroupWorker
		}
		if p.Name != name || p.Labels[roleKey] != fleet.RoleLabel(role) || !ownedByStatefulSet(p, owner) {
			continue
		}
		out[g] = append(out[g], groupPod{pod: p, group: g, worker: w})
	}
	for _, ps := range out {
		sort.Slice(ps, func(i, j int) bool { return ps[i].worker < ps[j].worker })
	}
	return out
}

// canonicalIndex parses an index label: decimal digits, no sign, no
// leading zero, at most 9 digits.
func canonicalIndex(s string) (int, bool) {
	if s == "" || len(s) > 9 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// ownedByStatefulSet reports whether p's controller is the StatefulSet
// (apps/v1) named name.
func ownedByStatefulSet(p *corev1.Pod, name string) bool {
	ref := metav1.GetControllerOf(p)
	return ref != nil && ref.APIVersion == "apps/v1" && ref.Kind == "StatefulSet" && ref.Name == name
}

// groupLine says why one group is not ready.
type groupLine struct {
	group int
	// reason is the revision reason of a pod that cannot run
	// (v1alpha1.ReasonUnschedulable, ReasonImagePullFailed,
	// ReasonEngineFailed); "" when the group is only not ready yet.
	reason string
	text   string
}

// groupReport is what a set's pods say of its groups.
type groupReport struct {
	// lines of the not-ready groups among the first desired, by group
	// index, at most v1alpha1.MaxGroupLines.
	lines []groupLine
	// more is the number of not-ready groups left out of lines.
	more int
	// leaders are the groups' leader pods.
	leaders []*corev1.Pod
}

// describeGroups reads why the first desired groups of a set are not
// ready from their pods (groupPods): a pod that cannot run (podProblem),
// else a pod not made yet, else a pod not ready; nothing for a group
// whose size pods are all ready. Groups at or past desired (being scaled
// down) are left out. Its work is bounded by the pods and
// MaxGroupLines, not by desired.
func describeGroups(set string, size, desired int32, groups map[int][]groupPod) groupReport {
	var r groupReport
	idx := make([]int, 0, len(groups))
	for g, ps := range groups {
		for _, gp := range ps {
			if gp.worker == 0 {
				r.leaders = append(r.leaders, gp.pod)
			}
		}
		if g < int(desired) {
			idx = append(idx, g)
		}
	}
	sort.Ints(idx)
	sort.Slice(r.leaders, func(i, j int) bool { return r.leaders[i].Name < r.leaders[j].Name })
	var lines []groupLine
	for _, g := range idx {
		if l, ok := groupLineOf(set, g, size, groups[g]); ok {
			lines = append(lines, l)
		}
	}
	// Groups without any pod: listed up to the budget, counted past it.
	missing := int(desired) - len(idx)
	for g, listed := 0, 0; g < int(desired) && listed < v1alpha1.MaxGroupLines && listed < missing; g++ {
		if _, ok := groups[g]; !ok {
			lines = append(lines, groupLine{group: g, text: fmt.Sprintf("group %d: no leader pod %s-%d yet", g, set, g)})
			listed++
		}
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].group < lines[j].group })
	notReady := len(lines) - min(missing, v1alpha1.MaxGroupLines) + missing
	if len(lines) > v1alpha1.MaxGroupLines {
		lines = lines[:v1alpha1.MaxGroupLines]
	}
	r.lines, r.more = lines, notReady-len(lines)
	return r
}

// groupLineOf says why group g (its pods sorted by worker index) is not
// ready, or ok false when its size pods are all ready.
func groupLineOf(set string, g int, size int32, pods []groupPod) (groupLine, bool) {
	for _, gp := range pods {
		if reason, kubeReason, msg := podProblem(gp.pod); reason != "" {
			return groupLine{group: g, reason: reason, text: clipLine(fmt.Sprintf("group %d: %s pod %s %s: %s: %s",
				g, podKind(gp), gp.pod.Name, podPhase(gp.pod), kubeReason, msg))}, true
		}
	}
	next := 0
	for _, gp := range pods {
		if gp.worker != next {
			break
		}
		next++
	}
	if next < int(size) {
		if next == 0 {
			return groupLine{group: g, text: fmt.Sprintf("group %d: no leader pod %s-%d yet", g, set, g)}, true
		}
		return groupLine{group: g, text: fmt.Sprintf("group %d: %d of %d pods, no worker pod %s-%d-%d yet",
			g, len(pods), size, set, g, next)}, true
	}
	for _, gp := range pods {
		if !podReady(gp.pod) {
			text := fmt.Sprintf("group %d: %s pod %s %s, not ready", g, podKind(gp), gp.pod.Name, podPhase(gp.pod))
			if why := notReadyWhy(gp.pod); why != "" {
				text += ": " + why
			}
			return groupLine{group: g, text: clipLine(text)}, true
		}
	}
	return groupLine{}, false
}

func podKind(gp groupPod) string {
	if gp.worker == 0 {
		return "leader"
	}
	return "worker"
}

// podPhase is a pod's phase, Terminating once it is being deleted.
func podPhase(p *corev1.Pod) string {
	switch {
	case p.DeletionTimestamp != nil:
		return "Terminating"
	case p.Status.Phase == "":
		return string(corev1.PodPending)
	}
	return string(p.Status.Phase)
}

// podReady reports whether a pod is ready and not being deleted.
func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// notReadyWhy is the reason and message of a pod's false Ready or
// PodScheduled condition ("ContainersNotReady: containers with unready
// status: [engine]"), "" when it has none.
func notReadyWhy(p *corev1.Pod) string {
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReady} {
		for _, c := range p.Status.Conditions {
			if c.Type == t && c.Status != corev1.ConditionTrue && (c.Reason != "" || c.Message != "") {
				return strings.TrimSuffix(strings.TrimSpace(c.Reason+": "+c.Message), ":")
			}
		}
	}
	return ""
}

// clipLine bounds a line to maxLineBytes (on a rune boundary).
func clipLine(s string) string {
	if len(s) <= maxLineBytes {
		return s
	}
	cut := maxLineBytes
	for cut > 0 && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + "…"
}

// joinLines is the lines of not-ready groups in one message, with the
// number left out.
func joinLines(lines []string, more int) string {
	s := strings.Join(lines, "; ")
	if more > 0 {
		s += fmt.Sprintf("; and %d more group(s)", more)
	}
	return s
}

// podsPerGroup is ModelRevisionStatus.PodsPerGroup for a role: "" when no
// variant of it runs groups; the pods of a group when every variant's
// group has as many; else each variant's, "h100=2,l40s=4".
func podsPerGroup(rev *v1alpha1.ModelRevision, role string) string {
	if !hasGroups(rev, role) {
		return ""
	}
	var parts []string
	sizes := map[int32]bool{}
	for _, v := range resources.Variants(rev) {
		pods := int32(1)
		if g, err := rev.Spec.Group(role, v); err == nil {
			pods = g.Pods
		}
		sizes[pods] = true
		name := ""
		if v != nil {
			name = v.Name
		}
		parts = append(parts, fmt.Sprintf("%s=%d", name, pods))
	}
	if len(sizes) == 1 {
		for n := range sizes {
			return strconv.Itoa(int(n))
		}
	}
	return strings.Join(parts, ",")
}

// Messages of RevisionConditionGangScheduled.
const (
	msgVolcano = "each group's pods are one Volcano PodGroup (schedulerName volcano; LeaderWorkerSet makes the PodGroups), " +
		"placed all at once or not at all"
	msgVolcanoPodGroupsMissing = "the groups' pods have schedulerName volcano, but LeaderWorkerSet made no PodGroup for leader pod %s " +
		"(no " + VolcanoGroupAnnotation + " annotation), so Volcano places its pods one by one: " +
		"run LeaderWorkerSet with gangSchedulingManagement.schedulerProvider: volcano (docs/kubernetes.md, \"Gang scheduling\")"
	msgCoscheduling = "each group's pods are one scheduler-plugins coscheduling PodGroup (" + CoschedulingPodGroupVersion +
		" <set>-<group index>, minMember = the group's pods, made by Kvasir and deleted with the group's leader pod): " +
		"they wait behind the scheduling gate " + resources.SchedulingGatePodGroup + " until it exists, then scheduler %s " +
		"places them all at once or not at all"
	msgCoschedulingOff = "the cluster has scheduler-plugins' coscheduling (" + CoschedulingPodGroupVersion + " PodGroup), " +
		"which the controller was told not to use (--coscheduling-scheduler-name is empty): groups are not gang-scheduled; " +
		"LeaderWorkerSet alone makes a group the unit (docs/kubernetes.md, \"Gang scheduling\")"
	msgVolcanoTopology = "role %s has a topologyKey: LeaderWorkerSet makes a group's workers only once its leader is " +
		"scheduled (exclusive topology), so a Volcano PodGroup of the whole group could never be met; its pods keep the " +
		"default scheduler and are not gang-scheduled (docs/kubernetes.md, \"Gang scheduling\")"
	msgCoschedulingTopology = "role %s has a topologyKey: LeaderWorkerSet makes a group's workers only once its leader is " +
		"scheduled (exclusive topology), so no coscheduling PodGroup can gang the whole group; its pods keep the default " +
		"scheduler and are not gang-scheduled (docs/kubernetes.md, \"Gang scheduling\")"
	msgCoschedulingForbidden = "the cluster has scheduler-plugins' coscheduling, but the controller may not make its PodGroups " +
		"or release the groups' gated pods (%v): the pods wait behind the scheduling gate " + resources.SchedulingGatePodGroup +
		"; give the controller the rights of config/201-controller-roles.yaml (docs/kubernetes.md, \"The controller's rights\")"
	msgNoGangScheduler = "no gang scheduler in the cluster (Volcano's " + VolcanoPodGroupVersion + " PodGroup is not served): " +
		"LeaderWorkerSet makes a group the unit, creating its pods together (startupPolicy LeaderCreated) and recreating " +
		"them together (RecreateGroupOnPodRestart), but the scheduler places them one by one (docs/kubernetes.md, \"Gang scheduling\")"
)

// markGangScheduling sets RevisionConditionGangScheduled from what the
// cluster serves, the groups' leader pods and, for coscheduling, what the
// controller could do (cos); it clears it for a revision without groups.
func markGangScheduling(st *v1alpha1.ModelRevisionStatus, grouped bool, apis ClusterAPIs, leaders []*corev1.Pod,
	cos coschedulingState) {
	switch {
	case !grouped:
		st.ClearGangScheduled()
	case apis.Volcano && cos.topologyRole != "":
		st.MarkNotGangScheduled(v1alpha1.ReasonVolcanoNotWithTopologyKey, msgVolcanoTopology, cos.topologyRole)
	case apis.Volcano:
		for _, p := range leaders {
			if p.Spec.SchedulerName == resources.VolcanoSchedulerName && p.Annotations[VolcanoGroupAnnotation] == "" {
				st.MarkNotGangScheduled(v1alpha1.ReasonVolcanoPodGroupsMissing, msgVolcanoPodGroupsMissing, p.Name)
				return
			}
		}
		st.MarkGangScheduled(v1alpha1.ReasonVolcano, msgVolcano)
	case apis.Coscheduling && cos.scheduler == "":
		st.MarkNotGangScheduled(v1alpha1.ReasonCoschedulingNotSupported, msgCoschedulingOff)
	case apis.Coscheduling && cos.release.forbidden != nil:
		st.MarkNotGangScheduled(v1alpha1.ReasonCoschedulingNotSupported, msgCoschedulingForbidden,
			clipLine(cos.release.forbidden.Error()))
	case apis.Coscheduling && cos.topologyRole != "":
		st.MarkNotGangScheduled(v1alpha1.ReasonCoschedulingNotSupported, msgCoschedulingTopology, cos.topologyRole)
	case apis.Coscheduling:
		st.MarkGangScheduled(v1alpha1.ReasonCoscheduling, msgCoscheduling, cos.scheduler)
	default:
		st.MarkNotGangScheduled(v1alpha1.ReasonNoGangScheduler, msgNoGangScheduler)
	}
}
