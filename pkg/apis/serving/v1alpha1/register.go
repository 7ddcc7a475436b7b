package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

// Group and version of the API.
const (
	GroupName = "serving.kvasir.dev"
	Version   = "v1alpha1"
)

// Kind names.
const (
	KindModelService  = "ModelService"
	KindModelRevision = "ModelRevision"
	KindTenant        = "Tenant"
)

// Labels the controller puts on ModelRevisions and on everything it creates
// for them (Deployments, Services, pods), and that selectors use.
const (
	// LabelService names the ModelService a revision belongs to.
	LabelService = GroupName + "/service"
	// LabelRevision names the ModelRevision a Deployment, Service or pod
	// belongs to.
	LabelRevision = GroupName + "/revision"
	// LabelRevisionGeneration is the revision's number within its service
	// (1 for <service>-00001), in decimal.
	LabelRevisionGeneration = GroupName + "/revision-generation"
	// LabelRole is the replica set's role: unified, prefill or decode.
	LabelRole = GroupName + "/role"
	// LabelVariant is the accelerator variant a Deployment's pods run on
	// (absent without variants).
	LabelVariant = GroupName + "/variant"
	// LabelRoutingState on a ModelRevision says whether traffic can reach
	// it: RoutingStateActive (a traffic target, or the latest created
	// revision on its way to ready) or RoutingStateReserve (kept for
	// rollback only). A reserve revision is scaled to zero whatever its
	// minScale, as Knative does, so that it holds no accelerator.
	LabelRoutingState = GroupName + "/routing-state"
)

// Values of LabelRoutingState.
const (
	RoutingStateActive  = "active"
	RoutingStateReserve = "reserve"
)

// AnnotationAutoscalerClass on a ModelService (the controller copies it to
// its revisions) chooses who decides a revision's replica count:
// AutoscalerClassKvasir (the default: Kvasir's autoscaler, on its LLM
// signals) or AutoscalerClassExternal (an HPA, KEDA or `kubectl scale`
// writing spec.replicas through the revision's scale subresource; Kvasir's
// autoscaler then only places that count on accelerator variants within
// capacity).
const (
	AnnotationAutoscalerClass = "autoscaling.kvasir.dev/class"
	AutoscalerClassKvasir     = "kvasir"
	AutoscalerClassExternal   = "external"
)

var (
	// SchemeGroupVersion is the group version of these types.
	SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: Version}

	// SchemeBuilder adds this group's types to a scheme; each kind registers
	// itself from its _types.go file.
	SchemeBuilder = &scheme.Builder{GroupVersion: SchemeGroupVersion}

	// AddToScheme adds this group to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Kind takes an unqualified kind and returns it qualified by this group.
func Kind(kind string) schema.GroupKind {
	return SchemeGroupVersion.WithKind(kind).GroupKind()
}

// Resource takes an unqualified resource and returns it qualified by this
// group.
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}
