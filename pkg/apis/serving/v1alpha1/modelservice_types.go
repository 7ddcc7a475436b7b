package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// ModelService serves one model name through revisions of an engine template.
type ModelService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ModelServiceSpec   `json:"spec,omitempty"`
	Status ModelServiceStatus `json:"status,omitempty"`
}

// ModelServiceSpec is the desired state of a ModelService.
type ModelServiceSpec struct {
	// Model is the name clients send in "model"; defaults to metadata.name.
	Model string `json:"model,omitempty"`
	// LoRAAdapters are adapter names the engines serve next to the model
	// (vLLM --lora-modules); a request naming one is routed to this service,
	// preferring replicas that have it loaded (scheduler plugin
	// lora-affinity).
	LoRAAdapters []string `json:"loraAdapters,omitempty"`
	// Template is the revision template: every change creates a new revision.
	Template RevisionTemplate `json:"template"`
	// Routing selects the scheduler plugins that pick a pod.
	Routing *RoutingSpec `json:"routing,omitempty"`
	// Traffic splits requests across revisions; absent = 100% latest ready.
	Traffic []TrafficTarget `json:"traffic,omitempty"`
}

// EngineType names the inference engine of a template.
type EngineType string

// Engine types.
const (
	EngineVLLM   EngineType = "vllm"
	EngineSGLang EngineType = "sglang"
	EngineSim    EngineType = "sim"
	EngineCustom EngineType = "custom"
)

// RevisionTemplate is what a revision snapshots.
type RevisionTemplate struct {
	Engine       EngineSpec                  `json:"engine"`
	Resources    corev1.ResourceRequirements `json:"resources,omitempty"`
	Accelerators []AcceleratorVariant        `json:"accelerators,omitempty"`
	Roles        *RolesSpec                  `json:"roles,omitempty"`
	Scaling      ScalingSpec                 `json:"scaling,omitempty"`
	// ContainerConcurrency limits requests per replica at the queue-proxy; 0 = unlimited.
	ContainerConcurrency int `json:"containerConcurrency,omitempty"`
	// TimeoutSeconds bounds one request end to end.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// EngineSpec describes the engine container (Kubernetes) or process (local).
type EngineSpec struct {
	Type  EngineType `json:"type,omitempty"`
	Image string     `json:"image,omitempty"`
	// Command run in local mode for custom and real engines; $(PORT) expands
	// to the port the engine must listen on.
	Command []string        `json:"command,omitempty"`
	Args    []string        `json:"args,omitempty"`
	Env     []corev1.EnvVar `json:"env,omitempty"`
	Port    int32           `json:"port,omitempty"`
}

// AcceleratorVariant is one way to place a replica, with its relative cost.
type AcceleratorVariant struct {
	Name         string                      `json:"name"`
	Resources    corev1.ResourceRequirements `json:"resources,omitempty"`
	NodeSelector map[string]string           `json:"nodeSelector,omitempty"`
	Cost         float64                     `json:"cost,omitempty"`
}

// RolesSpec splits a revision into prefill and decode replica sets.
type RolesSpec struct {
	Prefill *RoleSpec `json:"prefill,omitempty"`
	Decode  *RoleSpec `json:"decode,omitempty"`
}

// RoleSpec overrides scaling (and engine args) for one role.
type RoleSpec struct {
	Scaling *ScalingSpec `json:"scaling,omitempty"`
	Args    []string     `json:"args,omitempty"`
}

// ScalingSpec bounds and targets the autoscaler.
type ScalingSpec struct {
	MinScale               *int32           `json:"minScale,omitempty"`
	MaxScale               *int32           `json:"maxScale,omitempty"`
	InitialScale           *int32           `json:"initialScale,omitempty"`
	Target                 *ScalingTarget   `json:"target,omitempty"`
	ScaleToZeroGracePeriod *metav1.Duration `json:"scaleToZeroGracePeriod,omitempty"`
	StableWindow           *metav1.Duration `json:"stableWindow,omitempty"`
	PanicWindowPercent     *int32           `json:"panicWindowPercent,omitempty"`
	PanicThresholdPercent  *int32           `json:"panicThresholdPercent,omitempty"`
}

// ScalingTarget is the per-replica target of one or several signals.
type ScalingTarget struct {
	Concurrency     *float64 `json:"concurrency,omitempty"`
	KVCacheUsage    *float64 `json:"kvCacheUsage,omitempty"`
	WaitingRequests *float64 `json:"waitingRequests,omitempty"`
	TokensPerSecond *float64 `json:"tokensPerSecond,omitempty"`
}

// RoutingSpec lists scheduler plugins with weights.
type RoutingSpec struct {
	Plugins []RoutingPlugin `json:"plugins,omitempty"`
}

// RoutingPlugin names one scheduler plugin, its weight (scorers; default 1)
// and its typed configuration (see docs/routing.md for each plugin's fields).
type RoutingPlugin struct {
	Name   string `json:"name"`
	Weight int    `json:"weight,omitempty"`
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	Config *runtime.RawExtension `json:"config,omitempty"`
}

// TrafficTarget sends a percent of requests to a revision.
type TrafficTarget struct {
	RevisionName   string `json:"revisionName,omitempty"`
	LatestRevision *bool  `json:"latestRevision,omitempty"`
	Percent        *int64 `json:"percent,omitempty"`
	Tag            string `json:"tag,omitempty"`
	URL            string `json:"url,omitempty"`
}

// ModelServiceStatus is the observed state.
type ModelServiceStatus struct {
	duckv1.Status `json:",inline"`

	URL                       string          `json:"url,omitempty"`
	LatestCreatedRevisionName string          `json:"latestCreatedRevisionName,omitempty"`
	LatestReadyRevisionName   string          `json:"latestReadyRevisionName,omitempty"`
	Traffic                   []TrafficTarget `json:"traffic,omitempty"`
}

// ModelServiceList is a list of ModelServices.
type ModelServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModelService `json:"items"`
}
