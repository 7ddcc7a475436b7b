package v1alpha1

import (
	"cmp"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// AcceleratorsByCost returns the template's accelerator variants, cheapest
// first (equal costs keep their order).
func (t *RevisionTemplate) AcceleratorsByCost() []AcceleratorVariant {
	vs := slices.Clone(t.Accelerators)
	slices.SortStableFunc(vs, func(a, b AcceleratorVariant) int { return cmp.Compare(a.Cost, b.Cost) })
	return vs
}

// VariantResources returns the engine's resources on variant v: the
// template's, with the variant's replacing those it names. A nil v gives
// the template's own.
func (t *RevisionTemplate) VariantResources(v *AcceleratorVariant) corev1.ResourceRequirements {
	r := *t.Resources.DeepCopy()
	if v == nil {
		return r
	}
	merge := func(dst *corev1.ResourceList, src corev1.ResourceList) {
		if len(src) > 0 && *dst == nil {
			*dst = corev1.ResourceList{}
		}
		for k, q := range src {
			(*dst)[k] = q.DeepCopy()
		}
	}
	merge(&r.Limits, v.Resources.Limits)
	merge(&r.Requests, v.Resources.Requests)
	return r
}

// RoleScaling returns the scaling of a role ("prefill" or "decode"): the
// role's own when it has one, else the template's. Defaulted templates
// have every role field filled.
func (t *RevisionTemplate) RoleScaling(role string) ScalingSpec {
	if t.Roles != nil {
		r := t.Roles.Decode
		if role == "prefill" {
			r = t.Roles.Prefill
		}
		if r != nil && r.Scaling != nil {
			return *r.Scaling
		}
	}
	return t.Scaling
}
