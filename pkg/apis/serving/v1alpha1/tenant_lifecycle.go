package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// Tenant conditions. Ready is True once every key of the tenant is resolved
// (the Secrets its secretKeyRefs name exist and hold their key) and the
// activators enforce the current generation.
const (
	// TenantConditionReady is the happy condition.
	TenantConditionReady = apis.ConditionReady
)

// Reasons of the Tenant conditions.
const (
	// ReasonKeysUnresolved: a key could not be read (a Secret or one of its
	// keys is missing, an environment variable is unset).
	ReasonKeysUnresolved = "KeysUnresolved"
)

var tenantCondSet = apis.NewLivingConditionSet()

// GetConditionSet returns the set of conditions of Tenants.
func (*Tenant) GetConditionSet() apis.ConditionSet { return tenantCondSet }

// GetGroupVersionKind returns the Tenant kind of this group and version.
func (*Tenant) GetGroupVersionKind() schema.GroupVersionKind {
	return SchemeGroupVersion.WithKind(KindTenant)
}

// GetStatus returns the duck status (conditions, observedGeneration).
func (t *Tenant) GetStatus() *duckv1.Status { return &t.Status.Status }

// IsReady is true when the status describes the current generation and
// Ready is True.
func (t *Tenant) IsReady() bool {
	return t.Status.ObservedGeneration == t.Generation &&
		t.Status.GetCondition(TenantConditionReady).IsTrue()
}

// IsFailed is true when Ready is False.
func (t *Tenant) IsFailed() bool {
	return t.Status.GetCondition(TenantConditionReady).IsFalse()
}

// InitializeConditions sets every unset condition to Unknown.
func (s *TenantStatus) InitializeConditions() {
	tenantCondSet.Manage(s).InitializeConditions()
}

// GetCondition returns the condition of type t, or nil.
func (s *TenantStatus) GetCondition(t apis.ConditionType) *apis.Condition {
	return tenantCondSet.Manage(s).GetCondition(t)
}

// IsReady is true when Ready is True (whatever generation it describes).
func (s *TenantStatus) IsReady() bool {
	return tenantCondSet.Manage(s).IsHappy()
}

// MarkReady records that every key is resolved and the tenant enforced.
func (s *TenantStatus) MarkReady() {
	tenantCondSet.Manage(s).MarkTrue(TenantConditionReady)
}

// MarkNotReady records that the tenant is not enforced yet (Unknown).
func (s *TenantStatus) MarkNotReady(reason, messageFormat string, messageA ...any) {
	tenantCondSet.Manage(s).MarkUnknown(TenantConditionReady, reason, messageFormat, messageA...)
}

// MarkFailed records that the tenant cannot be enforced (False), for
// example ReasonKeysUnresolved. The message must never hold a key.
func (s *TenantStatus) MarkFailed(reason, messageFormat string, messageA ...any) {
	tenantCondSet.Manage(s).MarkFalse(TenantConditionReady, reason, messageFormat, messageA...)
}
