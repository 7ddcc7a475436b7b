package modelservice

import (
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// These test the pure steps of Reconcile without an API server.

func TestPrepareMarksInvalidSpec(t *testing.T) {
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "default", Generation: 3}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	require.True(t, prepare(ms))
	require.Equal(t, "llama", ms.Spec.Model, "defaulted")
	require.Equal(t, int64(3), ms.Status.ObservedGeneration)

	bad := ms.DeepCopy()
	bad.Spec.Template.Engine.Type = "no-such-engine"
	require.False(t, prepare(bad))
	cond := bad.Status.GetCondition(v1alpha1.ModelServiceConditionReady)
	require.NotNil(t, cond)
	require.True(t, cond.IsFalse(), "an invalid spec fails the service")
}

func TestNewRevision(t *testing.T) {
	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "ns", UID: "uid-1",
		Annotations: map[string]string{v1alpha1.AnnotationAutoscalerClass: "hpa"}}}
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	ms.Spec.Template.Scaling.MinScale = ptr.To[int32](3)
	ms.SetDefaults()

	rev := newRevision(ms, 4, snapshot(ms))
	require.Equal(t, v1alpha1.RevisionName("llama", 4), rev.Name)
	require.Equal(t, "ns", rev.Namespace)
	require.Equal(t, map[string]string{v1alpha1.LabelService: "llama", v1alpha1.LabelRevisionGeneration: "4"}, rev.Labels)
	require.Equal(t, 4, generation(rev))
	require.True(t, metav1.IsControlledBy(rev, ms))
	require.Equal(t, "hpa", rev.Annotations[v1alpha1.AnnotationAutoscalerClass], "the autoscaler class follows the service")
	require.Equal(t, int32(3), *rev.Spec.Replicas, "starts at least at minScale")

	ms.Annotations = nil
	ms.Spec.Template.Scaling.MinScale = ptr.To[int32](0)
	rev = newRevision(ms, 1, snapshot(ms))
	require.Empty(t, rev.Annotations)
	require.Equal(t, *ms.Spec.Template.Scaling.InitialScale, *rev.Spec.Replicas, "starts at the initial scale")
}

func TestLatestReadyRevisionOnlyMovesForward(t *testing.T) {
	rev := func(name string, ready bool) *v1alpha1.ModelRevision {
		r := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if ready {
			r.Status.InitializeConditions()
			r.Status.MarkResourcesAvailable()
			r.Status.MarkContainerHealthy()
			r.Status.MarkActive()
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		revs    []*v1alpha1.ModelRevision
		current string
		want    string
	}{
		{"none ready", []*v1alpha1.ModelRevision{rev("a", false), rev("b", false)}, "", ""},
		{"newest ready wins", []*v1alpha1.ModelRevision{rev("a", true), rev("b", true)}, "a", "b"},
		{"an older ready one gets nothing back", []*v1alpha1.ModelRevision{rev("a", true), rev("b", false)}, "b", "b"},
		{"a newer unready one does not take over", []*v1alpha1.ModelRevision{rev("a", true), rev("b", false)}, "a", "a"},
		{"the current one stays while not ready", []*v1alpha1.ModelRevision{rev("a", false), rev("b", false)}, "a", "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, latestReadyRevision(tc.revs, tc.current))
		})
	}
}
