package v1alpha1

// Defaults of the Tenant API; the same in local mode and on Kubernetes.
const (
	// DefaultTenantPriority is a tenant's priority when unset.
	DefaultTenantPriority = PriorityStandard
	// DefaultTenantWeight is a tenant's weight when unset.
	DefaultTenantWeight = 1
)

// SetDefaults fills unset fields: priority standard, weight 1, models
// ["*"] and a limit's model "*". It is idempotent. As for ModelServices
// there is no defaulting webhook: whoever reads a Tenant defaults it.
func (t *Tenant) SetDefaults() {
	t.Spec.SetDefaults()
}

// SetDefaults fills the spec's unset fields. An explicitly empty models
// list stays empty (Validate refuses it): only an absent one means all.
func (s *TenantSpec) SetDefaults() {
	if s.Priority == "" {
		s.Priority = DefaultTenantPriority
	}
	if s.Weight == nil {
		s.Weight = ptr(int32(DefaultTenantWeight))
	}
	if s.Models == nil {
		s.Models = []string{AllModels}
	}
	for i := range s.Limits {
		if s.Limits[i].Model == "" {
			s.Limits[i].Model = AllModels
		}
	}
}
