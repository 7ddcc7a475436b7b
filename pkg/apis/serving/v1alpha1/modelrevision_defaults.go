package v1alpha1

// SetDefaults fills unset fields. It is idempotent. Revisions are created
// from a defaulted ModelService, so this only matters for revisions written
// by hand: the model defaults to the service named by LabelService (else to
// the revision's name), the template as for a ModelService, replicas to the
// serving role's initialScale (the API server defaults a missing
// spec.replicas to 1 before anyone reads it).
func (r *ModelRevision) SetDefaults() {
	if r.Spec.Model == "" {
		r.Spec.Model = r.Labels[LabelService]
	}
	if r.Spec.Model == "" {
		r.Spec.Model = r.Name
	}
	r.Spec.RevisionTemplate.SetDefaults()
	if r.Spec.Replicas == nil {
		n := *r.Spec.ServingScaling().InitialScale
		r.Spec.Replicas = &n
	}
}

// ServingScaling returns the scaling of the serving role, the one
// spec.replicas counts: decode's when the revision is split, else the
// template's. Call it on a defaulted spec (every field set).
func (s *ModelRevisionSpec) ServingScaling() *ScalingSpec {
	if s.Roles != nil && s.Roles.Decode != nil && s.Roles.Decode.Scaling != nil {
		return s.Roles.Decode.Scaling
	}
	return &s.Scaling
}
