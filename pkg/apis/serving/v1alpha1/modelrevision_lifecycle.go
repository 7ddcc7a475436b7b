package v1alpha1

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// ModelRevision conditions. Ready is True when ResourcesAvailable and
// ContainerHealthy are. Active is informational (severity Info, not part of
// Ready): a revision scaled to zero stays Ready, as in Knative.
const (
	// RevisionConditionReady is the happy condition.
	RevisionConditionReady = apis.ConditionReady
	// RevisionConditionResourcesAvailable says whether the revision's
	// Deployments and Services exist and its pods can be placed: False with
	// ReasonUnschedulable when no node has the accelerators, with
	// ReasonProgressDeadlineExceeded when a Deployment gives up.
	RevisionConditionResourcesAvailable apis.ConditionType = "ResourcesAvailable"
	// RevisionConditionContainerHealthy says whether the engine (and its
	// queue-proxy) start and pass readiness: False with
	// ReasonImagePullFailed or ReasonEngineFailed.
	RevisionConditionContainerHealthy apis.ConditionType = "ContainerHealthy"
	// RevisionConditionActive says whether the revision has ready replicas
	// (True), is scaled to zero (False, ReasonNoTraffic) or is scaling from
	// zero (Unknown, ReasonActivating).
	RevisionConditionActive apis.ConditionType = "Active"
	// RevisionConditionCapacityAvailable is the autoscaler's: True when
	// every replica it wants can be placed, False with
	// ReasonInsufficientAccelerators and the missing resources otherwise.
	// Informational; when nothing can be placed and nothing is ready,
	// ResourcesAvailable turns False with the same reason.
	RevisionConditionCapacityAvailable apis.ConditionType = "CapacityAvailable"
	// RevisionConditionGangScheduled says, for a revision with serving
	// groups on Kubernetes, whether a gang scheduler places each group's
	// pods all at once: True with ReasonVolcano or ReasonCoscheduling;
	// False with ReasonVolcanoPodGroupsMissing,
	// ReasonCoschedulingNotSupported or ReasonNoGangScheduler, saying
	// what is missing. Informational: a
	// group is still placed whole or retried by LeaderWorkerSet. Absent
	// when no role runs groups.
	RevisionConditionGangScheduled apis.ConditionType = "GangScheduled"
)

// Reasons of RevisionConditionGangScheduled.
const (
	// ReasonVolcano: the groups' pods are scheduled by Volcano, one
	// PodGroup a group.
	ReasonVolcano = "Volcano"
	// ReasonVolcanoPodGroupsMissing: Volcano schedules the pods, but
	// LeaderWorkerSet makes no PodGroups (its gang scheduling is not
	// configured for Volcano).
	ReasonVolcanoPodGroupsMissing = "VolcanoPodGroupsMissing"
	// ReasonCoscheduling: the groups' pods are scheduled by
	// scheduler-plugins' coscheduling, one PodGroup a group, which the
	// controller makes while the pods wait behind a scheduling gate.
	ReasonCoscheduling = "Coscheduling"
	// ReasonCoschedulingNotSupported: the cluster has scheduler-plugins'
	// coscheduling, but the groups cannot use it: a grouped role has a
	// topology key (LeaderWorkerSet places a group's leader before it
	// makes the workers), the controller was told not to use it, or it
	// lacks the rights to make PodGroups or release gated pods.
	ReasonCoschedulingNotSupported = "CoschedulingNotSupported"
	// ReasonNoGangScheduler: no gang scheduler; LeaderWorkerSet alone
	// makes a group the unit.
	ReasonNoGangScheduler = "NoGangScheduler"
	// ReasonVolcanoNotWithTopologyKey: the cluster has Volcano, but a
	// grouped role has a topology key, under which LeaderWorkerSet makes a
	// group's workers only once its leader is scheduled, so a Volcano
	// PodGroup of the whole group could never be met: that role's pods
	// keep the default scheduler.
	ReasonVolcanoNotWithTopologyKey = "VolcanoNotWithTopologyKey"
)

// MaxGroupLines bounds GroupSetStatus.NotReady and the group lines of a
// condition message.
const MaxGroupLines = 8

// Reasons of the ModelRevision conditions (Kubernetes' own reasons, for
// example a container's waiting reason, may be passed on as they are).
const (
	ReasonDeploying                = "Deploying"
	ReasonUnschedulable            = "Unschedulable"
	ReasonProgressDeadlineExceeded = "ProgressDeadlineExceeded"
	ReasonImagePullFailed          = "ImagePullFailed"
	ReasonEngineFailed             = "EngineFailed"
	ReasonNoTraffic                = "NoTraffic"
	ReasonActivating               = "Activating"
	ReasonInsufficientAccelerators = "InsufficientAccelerators"
)

var modelRevisionCondSet = apis.NewLivingConditionSet(
	RevisionConditionResourcesAvailable,
	RevisionConditionContainerHealthy,
)

// RevisionName names the n-th revision (from 1) of a service:
// "<service>-00001". Past 99999 the number just grows wider.
func RevisionName(service string, generation int) string {
	return fmt.Sprintf("%s-%05d", service, generation)
}

// GetConditionSet returns the set of conditions of ModelRevisions.
func (*ModelRevision) GetConditionSet() apis.ConditionSet { return modelRevisionCondSet }

// GetGroupVersionKind implements kmeta.OwnerRefable: a revision owns its
// Deployments and Services.
func (*ModelRevision) GetGroupVersionKind() schema.GroupVersionKind {
	return SchemeGroupVersion.WithKind(KindModelRevision)
}

// GetStatus returns the duck status (conditions, observedGeneration).
func (r *ModelRevision) GetStatus() *duckv1.Status { return &r.Status.Status }

// IsReady is true when the status describes the current generation and
// Ready is True.
func (r *ModelRevision) IsReady() bool {
	return r.Status.ObservedGeneration == r.Generation &&
		r.Status.GetCondition(RevisionConditionReady).IsTrue()
}

// IsFailed is true when Ready is False.
func (r *ModelRevision) IsFailed() bool {
	return r.Status.GetCondition(RevisionConditionReady).IsFalse()
}

// InitializeConditions sets every unset condition to Unknown.
func (s *ModelRevisionStatus) InitializeConditions() {
	modelRevisionCondSet.Manage(s).InitializeConditions()
}

// GetCondition returns the condition of type t, or nil.
func (s *ModelRevisionStatus) GetCondition(t apis.ConditionType) *apis.Condition {
	return modelRevisionCondSet.Manage(s).GetCondition(t)
}

// IsReady is true when Ready is True (whatever generation it describes).
func (s *ModelRevisionStatus) IsReady() bool {
	return modelRevisionCondSet.Manage(s).IsHappy()
}

// MarkResourcesAvailable records that the Deployments and Services exist
// and the pods could be placed.
func (s *ModelRevisionStatus) MarkResourcesAvailable() {
	modelRevisionCondSet.Manage(s).MarkTrue(RevisionConditionResourcesAvailable)
}

// MarkResourcesAvailableUnknown records that the resources are being set up.
func (s *ModelRevisionStatus) MarkResourcesAvailableUnknown(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkUnknown(RevisionConditionResourcesAvailable, reason, messageFormat, messageA...)
}

// MarkResourcesUnavailable records that the revision cannot run, for
// example ReasonUnschedulable for lack of accelerators.
func (s *ModelRevisionStatus) MarkResourcesUnavailable(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkFalse(RevisionConditionResourcesAvailable, reason, messageFormat, messageA...)
}

// MarkContainerHealthy records that the engine started and passed readiness.
func (s *ModelRevisionStatus) MarkContainerHealthy() {
	modelRevisionCondSet.Manage(s).MarkTrue(RevisionConditionContainerHealthy)
}

// MarkContainerHealthyUnknown records that the engine is still starting.
func (s *ModelRevisionStatus) MarkContainerHealthyUnknown(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkUnknown(RevisionConditionContainerHealthy, reason, messageFormat, messageA...)
}

// MarkContainerUnhealthy records that the engine cannot start or crashed,
// for example ReasonImagePullFailed.
func (s *ModelRevisionStatus) MarkContainerUnhealthy(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkFalse(RevisionConditionContainerHealthy, reason, messageFormat, messageA...)
}

// MarkActive records that the revision has ready replicas.
func (s *ModelRevisionStatus) MarkActive() {
	modelRevisionCondSet.Manage(s).MarkTrue(RevisionConditionActive)
}

// MarkActivating records that the revision is scaling from zero.
func (s *ModelRevisionStatus) MarkActivating(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkUnknown(RevisionConditionActive, reason, messageFormat, messageA...)
}

// MarkInactive records that the revision is scaled to zero; it stays Ready.
func (s *ModelRevisionStatus) MarkInactive(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkFalse(RevisionConditionActive, reason, messageFormat, messageA...)
}

// SetReplicas records the desired and the ready replica count of the
// serving role.
func (s *ModelRevisionStatus) SetReplicas(desired, actual int32) {
	s.DesiredReplicas = &desired
	s.ActualReplicas = &actual
}

// MarkCapacityAvailable records that the autoscaler placed every replica
// it wants.
func (s *ModelRevisionStatus) MarkCapacityAvailable() {
	modelRevisionCondSet.Manage(s).MarkTrue(RevisionConditionCapacityAvailable)
}

// MarkCapacityUnavailable records replicas the autoscaler wants and cannot
// place, naming the missing resources.
func (s *ModelRevisionStatus) MarkCapacityUnavailable(messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkFalse(RevisionConditionCapacityAvailable, ReasonInsufficientAccelerators, messageFormat, messageA...)
}

// MarkGangScheduled records that a gang scheduler places each serving
// group's pods at once (reason names it).
func (s *ModelRevisionStatus) MarkGangScheduled(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).SetCondition(apis.Condition{Type: RevisionConditionGangScheduled,
		Status: corev1.ConditionTrue, Severity: apis.ConditionSeverityInfo, Reason: reason, Message: fmt.Sprintf(messageFormat, messageA...)})
}

// MarkNotGangScheduled records that no gang scheduler places the serving
// groups' pods, and what is missing.
func (s *ModelRevisionStatus) MarkNotGangScheduled(reason, messageFormat string, messageA ...any) {
	modelRevisionCondSet.Manage(s).MarkFalse(RevisionConditionGangScheduled, reason, messageFormat, messageA...)
}

// ClearGangScheduled removes RevisionConditionGangScheduled, for a
// revision without serving groups.
func (s *ModelRevisionStatus) ClearGangScheduled() {
	_ = modelRevisionCondSet.Manage(s).ClearCondition(RevisionConditionGangScheduled)
}
