package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/equality"
	"knative.dev/pkg/apis"
)

// Validate checks a defaulted ModelRevision and returns every problem with
// its field path (metadata.name, spec.model, spec.engine.port, ...), or nil.
// The template is checked as in a ModelService, at spec.* instead of
// spec.template.*.
func (r *ModelRevision) Validate() *apis.FieldError {
	var errs *apis.FieldError
	if r.Name == "" {
		errs = errs.Also(apis.ErrMissingField("metadata.name"))
	} else {
		errs = errs.Also(validateDNSLabel(r.Name, 63, "metadata.name"))
	}
	if r.Spec.Model == "" {
		errs = errs.Also(apis.ErrMissingField("spec.model"))
	}
	errs = errs.Also(validateModel(r.Spec.Model, r.Spec.LoRAAdapters).ViaField("spec"))
	errs = errs.Also(r.Spec.RevisionTemplate.validate().ViaField("spec"))
	if r.Spec.Replicas != nil && *r.Spec.Replicas < 0 {
		errs = errs.Also(apis.ErrInvalidValue(*r.Spec.Replicas, "spec.replicas", "must be >= 0"))
	}
	return errs
}

// ValidateUpdate checks an update of old to r: a revision is immutable but
// for spec.replicas (the scale subresource). The CRD enforces the same with
// a CEL transition rule.
func (r *ModelRevision) ValidateUpdate(old *ModelRevision) *apis.FieldError {
	errs := r.Validate()
	a, b := r.Spec, old.Spec
	a.Replicas, b.Replicas = nil, nil
	if !equality.Semantic.DeepEqual(a, b) {
		errs = errs.Also(&apis.FieldError{
			Message: "a revision is immutable: only spec.replicas may change",
			Paths:   []string{"spec"},
		})
	}
	return errs
}
