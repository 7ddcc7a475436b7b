package names

import (
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// Ports of a revision pod.
const (
	// QueueProxyPort is where the queue-proxy serves traffic, readiness and
	// stats; the Service and its EndpointSlices point here.
	QueueProxyPort = 8012
	// QueueProxyPortName names it in the Service.
	QueueProxyPortName = "http"
)

// Roles returns the roles a revision runs (fleet.Role*).
func Roles(rev *v1alpha1.ModelRevision) []string { return fleet.Roles(rev.Spec.Roles != nil) }

// Deployment is the name of a revision role's Deployment on an accelerator
// variant ("" without variants): <revision>-deployment, <revision>-<role>,
// with -<variant> after the revision or role.
func Deployment(rev *v1alpha1.ModelRevision, role, variant string) string {
	name := rev.Name
	if role != fleet.RoleUnified {
		name += "-" + role
	}
	switch {
	case variant != "":
		return name + "-" + variant
	case role == fleet.RoleUnified:
		return name + "-deployment"
	}
	return name
}

// LeaderWorkerSet is the name of the LeaderWorkerSet of a revision role
// whose replicas are serving groups, on an accelerator variant ("" without
// variants): <revision>[-<role>][-<variant>]-group. LWS names its headless
// Service after it, so it must differ from every Service name (never
// ending in -group) as well as from the role's Deployments.
func LeaderWorkerSet(rev *v1alpha1.ModelRevision, role, variant string) string {
	name := rev.Name
	if role != fleet.RoleUnified {
		name += "-" + role
	}
	if variant != "" {
		name += "-" + variant
	}
	return name + "-group"
}

// Service is the name of a revision role's Service.
func Service(rev *v1alpha1.ModelRevision, role string) string {
	if role == fleet.RoleUnified {
		return rev.Name
	}
	return rev.Name + "-" + role
}

// LoRAConfigMap is the name of the ConfigMap that holds a service's LoRA
// adapters for the queue-proxies of its revisions.
func LoRAConfigMap(service string) string { return service + "-lora-adapters" }
