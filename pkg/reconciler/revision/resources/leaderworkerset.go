package resources

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"knative.dev/pkg/kmeta"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// LabelGroupWorker marks the worker pods of a revision role's serving
// groups, with the role's label (fleet.RoleLabel) as its value. Workers
// carry it instead of v1alpha1.LabelRole, so that the role's Service (and
// so the activators' EndpointSlices) never selects them: only a group's
// leader, with the queue-proxy, is routable.
const LabelGroupWorker = v1alpha1.GroupName + "/group-worker"

// The placeholders of the environment LeaderWorkerSet (sigs.k8s.io/lws
// v0.7.0) puts first in every container of a group, which the kubelet
// expands in the engine's arguments and environment.
const (
	// LWSLeaderAddressVar is the leader pod's address (its host name under
	// the set's headless Service).
	LWSLeaderAddressVar = "$(" + lwsv1.LwsLeaderAddress + ")"
	// LWSWorkerIndexVar is the pod's index in its group: 0 for the leader,
	// 1 to size-1 for the workers.
	LWSWorkerIndexVar = "$(" + lwsv1.LwsWorkerIndex + ")"
)

// SchedulingGatePodGroup is the scheduling gate that holds a serving
// group's pods, when scheduler-plugins' coscheduling gangs them
// (UsesCoscheduling), until the revision reconciler has made their
// group's PodGroup and labelled them with CoschedulingPodGroupLabel: LWS
// gives every group of a set one pod template, so a group's own PodGroup
// cannot be named in it. The reconciler removes the gate and adds the
// label in one patch.
const SchedulingGatePodGroup = v1alpha1.GroupName + "/pod-group"

// CoschedulingPodGroupLabel is the label by which a pod names its
// scheduler-plugins coscheduling PodGroup (in its namespace).
const CoschedulingPodGroupLabel = "scheduling.x-k8s.io/pod-group"

// UsesCoscheduling reports whether a role's serving groups are gang-
// scheduled by scheduler-plugins' coscheduling: cfg says the cluster
// serves it (Coscheduling) and names its scheduler, and the role has no
// topology key. A topology key is LWS's exclusive topology, under which
// LWS makes a group's workers only once its leader is scheduled, so no
// gang of the whole group can form; such a role's pods keep
// GroupSchedulerName and no gate.
func UsesCoscheduling(rev *v1alpha1.ModelRevision, role string, cfg Config) bool {
	return cfg.Coscheduling && cfg.CoschedulingSchedulerName != "" && rev.Spec.RoleTopologyKey(role) == ""
}

// WorkerLabels are the labels of a serving group's worker pods: the
// service's, the revision's, the variant's when it has one, and
// LabelGroupWorker, but not v1alpha1.LabelRole (so not Selector's).
func WorkerLabels(rev *v1alpha1.ModelRevision, role, variant string) map[string]string {
	l := map[string]string{
		v1alpha1.LabelService:  rev.Labels[v1alpha1.LabelService],
		v1alpha1.LabelRevision: rev.Name,
		LabelGroupWorker:       fleet.RoleLabel(role),
	}
	if variant != "" {
		l[v1alpha1.LabelVariant] = variant
	}
	return l
}

// MakeLeaderWorkerSet builds the LeaderWorkerSet of one role of a revision
// on an accelerator variant (nil without variants), owned by the revision,
// for a role whose replicas are serving groups (rev.Spec.Group(role, v)
// has more than one pod; a one-pod role is a Deployment: MakeDeployment).
// replicas is the desired number of groups.
//
// Each group is size = pods per replica: a leader, the pod of a
// Deployment (engine rank 0 with the queue-proxy, labelled as the
// Deployment's pods, so the role's Service selects it), and size-1
// workers sharing one template: the engine alone, its rank and the
// leader's address from LWS's environment, labelled with WorkerLabels.
// Every pod holds the variant's resources, its share of the replica's
// accelerators, and cfg.GroupSchedulerName as its scheduler (unless the
// role has a topology key: then the default scheduler); or, when the
// role's groups are coscheduled (UsesCoscheduling),
// cfg.CoschedulingSchedulerName and the scheduling gate
// SchedulingGatePodGroup, which the revision reconciler removes once the
// pod's group has its PodGroup. A pod that
// fails or restarts recreates its whole group
// (RecreateGroupOnPodRestart), and workers start with the leader
// (LeaderCreated): the leader is ready only once its workers joined. The
// role's topology key, when it has one, is LWS's exclusive topology
// (LeaderWorkerSetAnnotations).
func MakeLeaderWorkerSet(rev *v1alpha1.ModelRevision, role string, v *v1alpha1.AcceleratorVariant, replicas int32, cfg Config) (*lwsv1.LeaderWorkerSet, error) {
	variant := variantName(v)
	shape, err := rev.Spec.Group(role, v)
	if err != nil {
		return nil, fmt.Errorf("role %s, variant %q: %w", fleet.RoleLabel(role), variant, err)
	}
	if !shape.Grouped() {
		return nil, fmt.Errorf("role %s, variant %q: one pod per replica is a Deployment, not a LeaderWorkerSet", fleet.RoleLabel(role), variant)
	}
	leader, err := engineContainer(rev, role, &engine.Group{Shape: shape, Rank: 0, LeaderAddress: LWSLeaderAddressVar}, cfg)
	if err != nil {
		return nil, err
	}
	worker, err := engineContainer(rev, role,
		&engine.Group{Shape: shape, Rank: 1, RankVar: LWSWorkerIndexVar, LeaderAddress: LWSLeaderAddressVar}, cfg)
	if err != nil {
		return nil, err
	}
	labels := DeploymentLabels(rev, role, variant)
	size := shape.Pods
	leaderPod, workerPod := revisionPodSpec(rev, v, leader, true, cfg), revisionPodSpec(rev, v, worker, false, cfg)
	if rev.Spec.RoleTopologyKey(role) == "" {
		// Not with a topology key: LWS's exclusive topology makes a group's
		// workers only once its leader is scheduled, and a gang scheduler
		// (Volcano's PodGroup of the whole group) would hold the leader
		// until they exist.
		leaderPod.SchedulerName, workerPod.SchedulerName = cfg.GroupSchedulerName, cfg.GroupSchedulerName
	}
	if UsesCoscheduling(rev, role, cfg) {
		leaderPod.SchedulerName, workerPod.SchedulerName = cfg.CoschedulingSchedulerName, cfg.CoschedulingSchedulerName
		leaderPod.SchedulingGates = []corev1.PodSchedulingGate{{Name: SchedulingGatePodGroup}}
		workerPod.SchedulingGates = []corev1.PodSchedulingGate{{Name: SchedulingGatePodGroup}}
	}
	return &lwsv1.LeaderWorkerSet{
		TypeMeta: metav1.TypeMeta{APIVersion: lwsv1.GroupVersion.String(), Kind: "LeaderWorkerSet"},
		ObjectMeta: metav1.ObjectMeta{
			Name:            names.LeaderWorkerSet(rev, role, variant),
			Namespace:       rev.Namespace,
			Labels:          labels,
			Annotations:     LeaderWorkerSetAnnotations(rev, role),
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)},
		},
		Spec: lwsv1.LeaderWorkerSetSpec{
			Replicas: &replicas,
			LeaderWorkerTemplate: lwsv1.LeaderWorkerTemplate{
				LeaderTemplate: &corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       leaderPod,
				},
				WorkerTemplate: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: WorkerLabels(rev, role, variant)},
					Spec:       workerPod,
				},
				Size:          &size,
				RestartPolicy: lwsv1.RecreateGroupOnPodRestart,
			},
			// LWS's defaults, spelled out: the reconciler compares what it
			// builds with what the API server stored.
			RolloutStrategy: lwsv1.RolloutStrategy{
				Type: lwsv1.RollingUpdateStrategyType,
				RollingUpdateConfiguration: &lwsv1.RollingUpdateConfiguration{
					Partition:      ptr.To[int32](0),
					MaxUnavailable: intstr.FromInt32(1),
					MaxSurge:       intstr.FromInt32(0),
				},
			},
			// Not LeaderReady: the leader is ready only once its workers
			// joined, so waiting for it would never start them.
			StartupPolicy: lwsv1.LeaderCreatedStartupPolicy,
		},
	}, nil
}

// LeaderWorkerSetAnnotations are the annotations of a role's
// LeaderWorkerSets: LWS's exclusive topology
// (lwsv1.ExclusiveKeyAnnotationKey) set to the role's topology key when it
// has one, nil otherwise. With it, LWS's pod webhook gives each group's
// leader a required pod affinity to its own group and a required
// anti-affinity to every other group over that key, and LWS makes the
// group's workers only once the leader is scheduled, with a node selector
// for the leader's domain: a group lands in one domain, and a domain holds
// one group.
func LeaderWorkerSetAnnotations(rev *v1alpha1.ModelRevision, role string) map[string]string {
	key := rev.Spec.RoleTopologyKey(role)
	if key == "" {
		return nil
	}
	return map[string]string{lwsv1.ExclusiveKeyAnnotationKey: key}
}

// Grouped reports whether a revision role's replicas on variant v (nil
// without variants) are serving groups of several pods, so a
// LeaderWorkerSet (MakeLeaderWorkerSet) rather than a Deployment. A role
// whose group does not derive (a revision that fails validation) is not
// grouped: MakeDeployment reports its error.
func Grouped(rev *v1alpha1.ModelRevision, role string, v *v1alpha1.AcceleratorVariant) bool {
	g, err := rev.Spec.Group(role, v)
	return err == nil && g.Grouped()
}

// AnyGrouped reports whether any role of a revision, on any variant, runs
// serving groups.
func AnyGrouped(rev *v1alpha1.ModelRevision) bool {
	for _, role := range names.Roles(rev) {
		for _, v := range Variants(rev) {
			if Grouped(rev, role, v) {
				return true
			}
		}
	}
	return false
}
