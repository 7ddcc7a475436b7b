package v1alpha1

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"knative.dev/pkg/apis"
	"knative.dev/pkg/kmeta"
)

var (
	_ kmeta.OwnerRefable      = (*ModelService)(nil)
	_ kmeta.OwnerRefable      = (*ModelRevision)(nil)
	_ apis.ConditionsAccessor = (*ModelServiceStatus)(nil)
	_ apis.ConditionsAccessor = (*ModelRevisionStatus)(nil)
)

func status(c *apis.Condition) corev1.ConditionStatus {
	if c == nil {
		return ""
	}
	return c.Status
}

// assertConditions checks the status of each named condition ("" = unset).
func assertConditions(t *testing.T, get func(apis.ConditionType) *apis.Condition, want map[apis.ConditionType]corev1.ConditionStatus) {
	t.Helper()
	for ct, st := range want {
		assert.Equal(t, st, status(get(ct)), "condition %s", ct)
	}
}

func TestModelServiceLifecycle(t *testing.T) {
	const (
		T = corev1.ConditionTrue
		F = corev1.ConditionFalse
		U = corev1.ConditionUnknown
	)
	ms := &ModelService{}
	ms.Generation = 2
	s := &ms.Status
	s.InitializeConditions()
	assertConditions(t, s.GetCondition, map[apis.ConditionType]corev1.ConditionStatus{
		ModelServiceConditionReady: U, ModelServiceConditionRevisionsReady: U, ModelServiceConditionTrafficReady: U})

	s.MarkRevisionsReady()
	assertConditions(t, s.GetCondition, map[apis.ConditionType]corev1.ConditionStatus{
		ModelServiceConditionReady: U, ModelServiceConditionRevisionsReady: T, ModelServiceConditionTrafficReady: U})
	assert.False(t, s.IsReady(), "revisions alone do not make a service ready")

	s.MarkTrafficReady()
	assert.True(t, s.IsReady(), "revisions and traffic ready make the service ready")
	assert.False(t, ms.IsReady(), "but not for a generation it has not observed")
	s.ObservedGeneration = 2
	assert.True(t, ms.IsReady())

	s.MarkRevisionMissing("llama-00009")
	ready := s.GetCondition(ModelServiceConditionReady)
	assert.Equal(t, F, ready.Status)
	assert.Equal(t, ReasonRevisionMissing, ready.Reason, "Ready says why")
	assert.Contains(t, ready.Message, `"llama-00009"`)
	assert.True(t, ms.IsFailed())

	s.MarkTrafficReady()
	s.MarkRevisionsNotReady(ReasonDeploying, "Revision %q is deploying.", "llama-00002")
	assertConditions(t, s.GetCondition, map[apis.ConditionType]corev1.ConditionStatus{
		ModelServiceConditionReady: U, ModelServiceConditionRevisionsReady: U, ModelServiceConditionTrafficReady: T})

	s.MarkRevisionsFailed(ReasonRevisionFailed, "boom")
	s.MarkTrafficNotReady(ReasonNoReadyRevision, "waiting")
	ready = s.GetCondition(ModelServiceConditionReady)
	assert.Equal(t, F, ready.Status, "a False dependent wins over an Unknown one")
	assert.Equal(t, ReasonRevisionFailed, ready.Reason)

	s.MarkTrafficFailed("Bad", "bad")
	s.MarkRevisionsReady()
	assert.Equal(t, "Bad", s.GetCondition(ModelServiceConditionReady).Reason)
}

func TestPropagateRevisionStatus(t *testing.T) {
	rev := func(mark func(*ModelRevisionStatus)) *ModelRevisionStatus {
		rs := &ModelRevisionStatus{}
		rs.InitializeConditions()
		mark(rs)
		return rs
	}
	tests := []struct {
		name       string
		rs         *ModelRevisionStatus
		want       corev1.ConditionStatus
		wantReason string
		wantMsg    string
	}{{
		name: "no status yet", rs: &ModelRevisionStatus{},
		want: corev1.ConditionUnknown, wantReason: ReasonDeploying,
	}, {
		name: "deploying",
		rs: rev(func(rs *ModelRevisionStatus) {
			rs.MarkResourcesAvailableUnknown(ReasonDeploying, "creating the Deployment")
		}),
		want: corev1.ConditionUnknown, wantReason: ReasonDeploying, wantMsg: "creating the Deployment",
	}, {
		name: "ready",
		rs:   rev(func(rs *ModelRevisionStatus) { rs.MarkResourcesAvailable(); rs.MarkContainerHealthy() }),
		want: corev1.ConditionTrue,
	}, {
		name: "unschedulable",
		rs: rev(func(rs *ModelRevisionStatus) {
			rs.MarkResourcesUnavailable(ReasonUnschedulable, "0/3 nodes have nvidia.com/gpu")
		}),
		want: corev1.ConditionFalse, wantReason: ReasonRevisionFailed, wantMsg: "Unschedulable: 0/3 nodes have nvidia.com/gpu",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &ModelServiceStatus{}
			s.InitializeConditions()
			s.PropagateRevisionStatus("llama-00002", tc.rs)
			c := s.GetCondition(ModelServiceConditionRevisionsReady)
			require.NotNil(t, c)
			assert.Equal(t, tc.want, c.Status)
			assert.Equal(t, tc.wantReason, c.Reason)
			assert.Contains(t, c.Message, tc.wantMsg)
			if tc.want != corev1.ConditionTrue {
				assert.Contains(t, c.Message, `"llama-00002"`)
			}
		})
	}
}

func TestOwnerRefable(t *testing.T) {
	ms := &ModelService{}
	ms.Name, ms.UID = "llama", "uid-1"
	ref := kmeta.NewControllerRef(ms)
	assert.Equal(t, "serving.kvasir.dev/v1alpha1", ref.APIVersion)
	assert.Equal(t, KindModelService, ref.Kind)
	assert.Equal(t, "llama", ref.Name)
	assert.Equal(t, KindModelRevision, (&ModelRevision{}).GetGroupVersionKind().Kind)
	assert.Len(t, ms.GetConditionSet().Manage(ms.GetStatus()).GetTopLevelCondition().GetReason(), 0)
}

func TestTrafficSummary(t *testing.T) {
	assert.Equal(t, "", TrafficSummary(nil))
	s := &ModelServiceStatus{}
	s.SetTraffic([]TrafficTarget{
		{RevisionName: "llama-00001", Percent: ptr(int64(90))},
		{RevisionName: "llama-00002", LatestRevision: ptr(true), Percent: ptr(int64(10)), Tag: "canary", URL: "http://canary"},
		{RevisionName: "llama-00001", Tag: "stable"},
		{Percent: ptr(int64(0))},
	})
	assert.Equal(t, "llama-00001=90%, llama-00002=10%@canary, llama-00001=0%@stable, latest=0%", s.TrafficSummary)
	assert.Len(t, s.Traffic, 4)
}
