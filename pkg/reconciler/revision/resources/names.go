package resources

import (
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// Variants returns the accelerator variants a revision's roles run on,
// cheapest first; one nil entry without variants.
func Variants(rev *v1alpha1.ModelRevision) []*v1alpha1.AcceleratorVariant {
	vs := rev.Spec.AcceleratorsByCost()
	if len(vs) == 0 {
		return []*v1alpha1.AcceleratorVariant{nil}
	}
	out := make([]*v1alpha1.AcceleratorVariant, len(vs))
	for i := range vs {
		out[i] = &vs[i]
	}
	return out
}

// Labels are the labels of everything a revision role owns; Selector picks
// its pods.
func Labels(rev *v1alpha1.ModelRevision, role string) map[string]string {
	return map[string]string{
		v1alpha1.LabelService:  rev.Labels[v1alpha1.LabelService],
		v1alpha1.LabelRevision: rev.Name,
		v1alpha1.LabelRole:     fleet.RoleLabel(role),
	}
}

// DeploymentLabels are a Deployment's labels and its pod template's: the
// role's, plus the variant's name when it has one.
func DeploymentLabels(rev *v1alpha1.ModelRevision, role, variant string) map[string]string {
	l := Labels(rev, role)
	if variant != "" {
		l[v1alpha1.LabelVariant] = variant
	}
	return l
}

// DeploymentSelector picks one Deployment's pods: Deployments of a role's
// variants must not overlap.
func DeploymentSelector(rev *v1alpha1.ModelRevision, role, variant string) map[string]string {
	s := Selector(rev, role)
	if variant != "" {
		s[v1alpha1.LabelVariant] = variant
	}
	return s
}

// Selector is the pod selector of a revision role (all its variants).
func Selector(rev *v1alpha1.ModelRevision, role string) map[string]string {
	return map[string]string{v1alpha1.LabelRevision: rev.Name, v1alpha1.LabelRole: fleet.RoleLabel(role)}
}
