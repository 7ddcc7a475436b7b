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

// DeploymentName is the name of a revision role's Deployment.
func DeploymentName(rev *v1alpha1.ModelRevision, role string) string {
	if role == RoleUnified {
		return rev.Name + "-deployment"
	}
	return rev.Name + "-" + role
}

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

// Selector is the pod selector of a revision role.
func Selector(rev *v1alpha1.ModelRevision, role string) map[string]string {
	return map[string]string{v1alpha1.LabelRevision: rev.Name, v1alpha1.LabelRole: role}
}
