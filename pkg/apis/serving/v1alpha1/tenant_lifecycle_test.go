package v1alpha1

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"knative.dev/pkg/apis"
)

func TestTenantLifecycle(t *testing.T) {
	tn := &Tenant{}
	tn.Generation = 2
	s := &tn.Status
	s.InitializeConditions()
	assertConditions(t, s.GetCondition, map[apis.ConditionType]corev1.ConditionStatus{TenantConditionReady: corev1.ConditionUnknown})
	assert.False(t, tn.IsReady())
	assert.False(t, tn.IsFailed())

	s.MarkReady()
	assert.True(t, s.IsReady())
	assert.False(t, tn.IsReady(), "status of an older generation")
	s.ObservedGeneration = 2
	assert.True(t, tn.IsReady())

	s.MarkFailed(ReasonKeysUnresolved, "Secret %q has no key %q.", "team-a-keys", "k1")
	assert.True(t, tn.IsFailed())
	c := s.GetCondition(TenantConditionReady)
	assert.Equal(t, ReasonKeysUnresolved, c.Reason)
	assert.Equal(t, `Secret "team-a-keys" has no key "k1".`, c.Message)

	s.MarkNotReady("Pending", "waiting for the activators")
	assert.Equal(t, corev1.ConditionUnknown, s.GetCondition(TenantConditionReady).Status)
	assert.Same(t, &tn.Status.Status, tn.GetStatus())
	assert.Equal(t, SchemeGroupVersion.WithKind(KindTenant), tn.GetGroupVersionKind())
	assert.NotNil(t, tn.GetConditionSet())
}

func TestSchemeRegistersTenant(t *testing.T) {
	s := runtime.NewScheme()
	require.NoError(t, AddToScheme(s))
	for kind, want := range map[string]runtime.Object{KindTenant: &Tenant{}, KindTenant + "List": &TenantList{}} {
		obj, err := s.New(SchemeGroupVersion.WithKind(kind))
		require.NoError(t, err, kind)
		assert.IsType(t, want, obj)
	}
	assert.Equal(t, "tenants.serving.kvasir.dev", Resource("tenants").String())
}

func TestTenantDeepCopyIsDeep(t *testing.T) {
	tn := issueExample(t)
	cp := tn.DeepCopy()
	assert.Equal(t, tn, cp)
	cp.Spec.APIKeys[1].SecretKeyRef.Key = "k2"
	*cp.Spec.Weight = 9
	*cp.Spec.Limits[0].TokensPerMinute = 1
	cp.Spec.Models[0] = "x"
	assert.Equal(t, "k1", tn.Spec.APIKeys[1].SecretKeyRef.Key)
	assert.Equal(t, int32(1), *tn.Spec.Weight)
	assert.Equal(t, int64(100000), *tn.Spec.Limits[0].TokensPerMinute)
	assert.Equal(t, "*", tn.Spec.Models[0])
}
