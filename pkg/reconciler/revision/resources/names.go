package resources

import "github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"

// Roles of a revision's replica sets.
const (
	RoleUnified = "unified"
	RolePrefill = "prefill"
	RoleDecode  = "decode"
)

// Roles returns the roles a revision runs.
func Roles(rev *v1alpha1.ModelRevision) []string {
	if rev.Spec.Roles != nil {
		return []string{RolePrefill, RoleDecode}
	}
	return []string{RoleUnified}
}

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

// DeploymentName is the name of a revision role's Deployment on an
// accelerator variant ("" without variants): <revision>-deployment,
// <revision>-<role>, with -<variant> after the revision or role.
func DeploymentName(rev *v1alpha1.ModelRevision, role, variant string) string {
	name := rev.Name
	if role != RoleUnified {
		name += "-" + role
	}
	switch {
	case variant != "":
		return name + "-" + variant
	case role == RoleUnified:
		return name + "-deployment"
	}
	return name
}

// LoRAConfigMapName is the name of the ConfigMap that holds a service's
// LoRA adapters for the queue-proxies of its revisions.
func LoRAConfigMapName(service string) string { return service + "-lora-adapters" }

// ServiceName is the name of a revision role's Service.
func ServiceName(rev *v1alpha1.ModelRevision, role string) string {
	if role == RoleUnified {
		return rev.Name
	}
	return rev.Name + "-" + role
}

// Labels are the labels of everything a revision role owns; Selector picks
// its pods.
func Labels(rev *v1alpha1.ModelRevision, role string) map[string]string {
	return map[string]string{
		v1alpha1.LabelService:  rev.Labels[v1alpha1.LabelService],
		v1alpha1.LabelRevision: rev.Name,
		v1alpha1.LabelRole:     role,
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
	return map[string]string{v1alpha1.LabelRevision: rev.Name, v1alpha1.LabelRole: role}
}
