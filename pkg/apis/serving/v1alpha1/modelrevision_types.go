package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// ModelRevision is an immutable snapshot of what runs in a ModelService's
// pods: its spec.template plus the model name and LoRA adapters the engines
// are started with. The controller creates one, named RevisionName(service,
// n), whenever any of those change, owned by the ModelService and labelled
// LabelService and LabelRevisionGeneration. Routing and traffic stay on the
// ModelService: they are read by the activators, not by the pods, and
// changing them creates no revision.
//
// Only spec.replicas may change after creation. The controller never
// updates anything else and ValidateUpdate reports other changes with a
// field path; the CRD cannot enforce it (a CEL transition rule comparing
// the template is rejected for its estimated cost, since env, args and
// resources are unbounded) and there is no webhook.
//
// spec.replicas is the scale subresource (`kubectl scale mrev`, an HPA, a
// KEDA ScaledObject): the desired number of replicas of the revision's
// serving role, the unified role or, when the revision is split, decode
// (prefill follows the autoscaler). It is always present (the API server
// defaults it to 1; the controller creates revisions with the role's
// initialScale), because the scale subresource fails on a missing field.
// With AnnotationAutoscalerClass: AutoscalerClassExternal the external
// scaler's count is what runs (Kvasir's autoscaler still places it on the
// accelerator variants within capacity). Otherwise Kvasir's autoscaler
// decides from its own signals and spec.replicas only gives the initial
// scale; status.desiredReplicas and status.actualReplicas say what runs.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.actualReplicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=mrev,categories=kvasir;all
// +kubebuilder:metadata:labels="app.kubernetes.io/name=kvasir"
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=`.metadata.labels['serving\.kvasir\.dev/service']`
// +kubebuilder:printcolumn:name="Generation",type=string,JSONPath=`.metadata.labels['serving\.kvasir\.dev/revision-generation']`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].reason`
// +kubebuilder:printcolumn:name="Actual Replicas",type=integer,JSONPath=`.status.actualReplicas`
// +kubebuilder:printcolumn:name="Desired Replicas",type=integer,JSONPath=`.status.desiredReplicas`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.model`,priority=1
// +kubebuilder:printcolumn:name="Engine",type=string,JSONPath=`.spec.engine.type`,priority=1
// +kubebuilder:printcolumn:name="Pods/Group",type=string,JSONPath=`.status.podsPerGroup`,priority=1
type ModelRevision struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ModelRevisionSpec   `json:"spec,omitempty"`
	Status ModelRevisionStatus `json:"status,omitempty"`
}

// ModelRevisionSpec is the snapshot: the service's (defaulted) template
// inline, its model name and adapters; plus the desired replica count, the
// one field that changes (the scale subresource).
type ModelRevisionSpec struct {
	RevisionTemplate `json:",inline"`

	// Model is the name the engines serve (the service's spec.model).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[^@]*$`
	Model string `json:"model"`
	// LoRAAdapters the engines start with, next to the model: the
	// service's when the revision was made. The service's current
	// adapters are loaded and unloaded at run time.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[^@=,\s-][^@=,\s]*$`
	LoRAAdapters []string `json:"loraAdapters,omitempty"`
	// Replicas is the desired replica count of the serving role, written
	// through the scale subresource by an external scaler (with
	// AutoscalerClassExternal); otherwise the initial scale.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	Replicas *int32 `json:"replicas,omitempty"`
}

// ModelRevisionStatus is the observed state of a revision.
type ModelRevisionStatus struct {
	duckv1.Status `json:",inline"`

	// ActualReplicas is the number of ready replicas of the serving role
	// (the scale subresource's status.replicas).
	// +optional
	ActualReplicas *int32 `json:"actualReplicas,omitempty"`
	// DesiredReplicas is what the autoscaler (or spec.replicas) asks for.
	// +optional
	DesiredReplicas *int32 `json:"desiredReplicas,omitempty"`
	// Selector is the label selector of the serving role's pods, in string
	// form (the scale subresource's status.selector), for example
	// "serving.kvasir.dev/revision=llama-00001".
	// +optional
	Selector string `json:"selector,omitempty"`
	// PodsPerGroup is, when the serving role's replicas are serving groups
	// of several pods, the pods of one group: "2", or per accelerator
	// variant when they differ ("h100=2,l40s=4"). Empty when every replica
	// is one pod. Its ready and desired groups are actualReplicas and
	// desiredReplicas.
	// +optional
	PodsPerGroup string `json:"podsPerGroup,omitempty"`
	// Groups are the revision's serving groups, one entry per
	// LeaderWorkerSet (a role on an accelerator variant): pods per group,
	// desired and ready groups, and why groups are not ready.
	// +optional
	// +listType=atomic
	Groups []GroupSetStatus `json:"groups,omitempty"`
}

// GroupSetStatus is the state of a role's serving groups on one
// accelerator variant: one LeaderWorkerSet.
type GroupSetStatus struct {
	// Role the groups serve: unified, prefill or decode.
	Role string `json:"role"`
	// Variant is the accelerator variant, empty without variants.
	// +optional
	Variant string `json:"variant,omitempty"`
	// LeaderWorkerSet is the name of the set that runs the groups.
	LeaderWorkerSet string `json:"leaderWorkerSet"`
	// PodsPerGroup is a group's pods: its leader and PodsPerGroup-1
	// workers.
	PodsPerGroup int32 `json:"podsPerGroup"`
	// Groups is the number of groups wanted (the set's replicas).
	Groups int32 `json:"groups"`
	// ReadyGroups is the number of groups whose every pod is ready (the
	// set's readyReplicas).
	ReadyGroups int32 `json:"readyGroups"`
	// NotReady says why groups are not ready, one line a group, by group
	// index, read from the groups' pods: for example "group 1: worker pod
	// llama-00001-group-1-1 Pending: Unschedulable: 0/4 nodes are
	// available: 4 Insufficient nvidia.com/gpu.". At most
	// MaxGroupLines lines; a last one counts the groups left out.
	// +optional
	// +listType=atomic
	NotReady []string `json:"notReady,omitempty"`
}

// ModelRevisionList is a list of ModelRevisions.
//
// +kubebuilder:object:root=true
type ModelRevisionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModelRevision `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ModelRevision{}, &ModelRevisionList{})
}
