package v1alpha1

import (
	"testing"

	"github.com/stretchr/testify/assert"
	corev1 "k8s.io/api/core/v1"
	"knative.dev/pkg/apis"
)

func TestModelRevisionLifecycle(t *testing.T) {
	const (
		T = corev1.ConditionTrue
		F = corev1.ConditionFalse
		U = corev1.ConditionUnknown
	)
	r := &ModelRevision{}
	s := &r.Status
	s.InitializeConditions()
	assertConditions(t, s.GetCondition, map[apis.ConditionType]corev1.ConditionStatus{
		RevisionConditionReady: U, RevisionConditionResourcesAvailable: U, RevisionConditionContainerHealthy: U,
		RevisionConditionActive: ""})

	s.MarkResourcesAvailable()
	assert.False(t, s.IsReady())
	s.MarkContainerHealthyUnknown(ReasonDeploying, "engine loading")
	assert.Equal(t, ReasonDeploying, s.GetCondition(RevisionConditionReady).Reason)
	s.MarkContainerHealthy()
	assert.True(t, s.IsReady())
	assert.True(t, r.IsReady())

	s.MarkActive()
	s.SetReplicas(2, 1)
	assert.Equal(t, int32(2), *s.DesiredReplicas)
	assert.Equal(t, int32(1), *s.ActualReplicas)

	s.MarkInactive(ReasonNoTraffic, "scaled to zero")
	s.SetReplicas(0, 0)
	assert.True(t, s.IsReady(), "a revision scaled to zero stays ready")
	active := s.GetCondition(RevisionConditionActive)
	assert.Equal(t, F, active.Status)
	assert.Equal(t, apis.ConditionSeverityInfo, active.Severity, "Active is informational")

	s.MarkActivating(ReasonActivating, "scaling from zero")
	assert.Equal(t, U, s.GetCondition(RevisionConditionActive).Status)
	assert.True(t, s.IsReady())

	s.MarkContainerUnhealthy(ReasonImagePullFailed, "pulling %q: not found", "vllm:nope")
	ready := s.GetCondition(RevisionConditionReady)
	assert.Equal(t, F, ready.Status)
	assert.Equal(t, ReasonImagePullFailed, ready.Reason)
	assert.Equal(t, `pulling "vllm:nope": not found`, ready.Message)
	assert.True(t, r.IsFailed())

	s.MarkContainerHealthy()
	s.MarkResourcesUnavailable(ReasonProgressDeadlineExceeded, "gave up")
	assert.Equal(t, ReasonProgressDeadlineExceeded, s.GetCondition(RevisionConditionReady).Reason)
	s.MarkResourcesAvailableUnknown(ReasonDeploying, "retrying")
	assert.Equal(t, U, s.GetCondition(RevisionConditionReady).Status)
}
