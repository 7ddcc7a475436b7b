package v1alpha1

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// ModelService conditions. Ready is True once the latest created revision is
// ready and traffic is routed as spec.traffic asks; while a new revision
// rolls out, Ready follows it (Unknown, then True or False with the
// revision's reason), as in Knative.
const (
	// ModelServiceConditionReady is the happy condition: RevisionsReady and
	// TrafficReady are both True.
	ModelServiceConditionReady = apis.ConditionReady
	// ModelServiceConditionRevisionsReady says whether the latest created
	// revision is ready (False with its reason when it failed).
	ModelServiceConditionRevisionsReady apis.ConditionType = "RevisionsReady"
	// ModelServiceConditionTrafficReady says whether every traffic target
	// resolved to a ready revision and the activators route to it.
	ModelServiceConditionTrafficReady apis.ConditionType = "TrafficReady"
)

// Reasons of the ModelService conditions.
const (
	// ReasonRevisionMissing: a traffic target names a revision that does
	// not exist.
	ReasonRevisionMissing = "RevisionMissing"
	// ReasonRevisionFailed: the latest created revision failed (its own
	// reason is in the message).
	ReasonRevisionFailed = "RevisionFailed"
	// ReasonNoReadyRevision: latestRevision traffic has no ready revision
	// to go to yet.
	ReasonNoReadyRevision = "NoReadyRevision"
)

var modelServiceCondSet = apis.NewLivingConditionSet(
	ModelServiceConditionRevisionsReady,
	ModelServiceConditionTrafficReady,
)

// GetConditionSet returns the set of conditions of ModelServices.
func (*ModelService) GetConditionSet() apis.ConditionSet { return modelServiceCondSet }

// GetGroupVersionKind implements kmeta.OwnerRefable: a ModelService owns its
// revisions.
func (*ModelService) GetGroupVersionKind() schema.GroupVersionKind {
	return SchemeGroupVersion.WithKind(KindModelService)
}

// GetStatus returns the duck status (conditions, observedGeneration).
func (ms *ModelService) GetStatus() *duckv1.Status { return &ms.Status.Status }

// IsReady is true when the status describes the current generation and
// Ready is True.
func (ms *ModelService) IsReady() bool {
	return ms.Status.ObservedGeneration == ms.Generation &&
		ms.Status.GetCondition(ModelServiceConditionReady).IsTrue()
}

// IsFailed is true when Ready is False.
func (ms *ModelService) IsFailed() bool {
	return ms.Status.GetCondition(ModelServiceConditionReady).IsFalse()
}

// InitializeConditions sets every unset condition to Unknown.
func (s *ModelServiceStatus) InitializeConditions() {
	modelServiceCondSet.Manage(s).InitializeConditions()
}

// GetCondition returns the condition of type t, or nil.
func (s *ModelServiceStatus) GetCondition(t apis.ConditionType) *apis.Condition {
	return modelServiceCondSet.Manage(s).GetCondition(t)
}

// IsReady is true when Ready is True (whatever generation it describes).
func (s *ModelServiceStatus) IsReady() bool {
	return modelServiceCondSet.Manage(s).IsHappy()
}

// MarkRevisionsReady records that the latest created revision is ready.
func (s *ModelServiceStatus) MarkRevisionsReady() {
	modelServiceCondSet.Manage(s).MarkTrue(ModelServiceConditionRevisionsReady)
}

// MarkRevisionsNotReady records that the latest created revision is not
// ready yet (Unknown).
func (s *ModelServiceStatus) MarkRevisionsNotReady(reason, messageFormat string, messageA ...any) {
	modelServiceCondSet.Manage(s).MarkUnknown(ModelServiceConditionRevisionsReady, reason, messageFormat, messageA...)
}

// MarkRevisionsFailed records that the latest created revision failed, or
// could not be created (False).
func (s *ModelServiceStatus) MarkRevisionsFailed(reason, messageFormat string, messageA ...any) {
	modelServiceCondSet.Manage(s).MarkFalse(ModelServiceConditionRevisionsReady, reason, messageFormat, messageA...)
}

// PropagateRevisionStatus sets RevisionsReady from the Ready condition of
// the latest created revision, named name: True, False with
// ReasonRevisionFailed and the revision's reason and message, or Unknown
// with the revision's reason while it deploys.
func (s *ModelServiceStatus) PropagateRevisionStatus(name string, rs *ModelRevisionStatus) {
	rc := rs.GetCondition(RevisionConditionReady)
	switch {
	case rc == nil:
		s.MarkRevisionsNotReady(ReasonDeploying, "Revision %q has no status yet.", name)
	case rc.IsTrue():
		s.MarkRevisionsReady()
	case rc.IsFalse():
		s.MarkRevisionsFailed(ReasonRevisionFailed, "Revision %q failed with %s: %s", name, rc.Reason, rc.Message)
	default:
		reason := rc.Reason
		if reason == "" {
			reason = ReasonDeploying
		}
		s.MarkRevisionsNotReady(reason, "Revision %q is not ready yet: %s", name, rc.Message)
	}
}

// MarkTrafficReady records that traffic is routed as spec.traffic asks.
func (s *ModelServiceStatus) MarkTrafficReady() {
	modelServiceCondSet.Manage(s).MarkTrue(ModelServiceConditionTrafficReady)
}

// MarkTrafficNotReady records that traffic is not routed yet (Unknown), for
// example while no revision is ready.
func (s *ModelServiceStatus) MarkTrafficNotReady(reason, messageFormat string, messageA ...any) {
	modelServiceCondSet.Manage(s).MarkUnknown(ModelServiceConditionTrafficReady, reason, messageFormat, messageA...)
}

// MarkTrafficFailed records that spec.traffic cannot be routed (False).
func (s *ModelServiceStatus) MarkTrafficFailed(reason, messageFormat string, messageA ...any) {
	modelServiceCondSet.Manage(s).MarkFalse(ModelServiceConditionTrafficReady, reason, messageFormat, messageA...)
}

// MarkRevisionMissing records that a traffic target names a revision that
// does not exist.
func (s *ModelServiceStatus) MarkRevisionMissing(revision string) {
	s.MarkTrafficFailed(ReasonRevisionMissing, "Revision %q referenced in spec.traffic does not exist.", revision)
}

// SetTraffic records the resolved traffic and its one-line summary.
func (s *ModelServiceStatus) SetTraffic(targets []TrafficTarget) {
	s.Traffic = targets
	s.TrafficSummary = TrafficSummary(targets)
}

// TrafficSummary renders resolved traffic targets in one line, in order:
// "<revision>=<percent>%", followed by "@<tag>" for a tagged target, joined
// by ", ". A target without a resolved revision shows "latest".
//
//	llama-00001=90%, llama-00002=10%@canary
func TrafficSummary(targets []TrafficTarget) string {
	parts := make([]string, 0, len(targets))
	for _, t := range targets {
		name := t.RevisionName
		if name == "" {
			name = "latest"
		}
		var pct int64
		if t.Percent != nil {
			pct = *t.Percent
		}
		p := fmt.Sprintf("%s=%d%%", name, pct)
		if t.Tag != "" {
			p += "@" + t.Tag
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}
