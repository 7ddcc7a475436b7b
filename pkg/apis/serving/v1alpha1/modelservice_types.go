package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// Bounds of the API. The CRDs carry them too (CEL cost estimation needs
// bounded lists and strings); Validate checks them with field paths.
const (
	// MaxServiceNameLength keeps revision names (<service>-00001) within a
	// DNS label.
	MaxServiceNameLength = 57
	// MaxTrafficTargets bounds spec.traffic.
	MaxTrafficTargets = 100
	// MaxLoRAAdapters bounds spec.loraAdapters.
	MaxLoRAAdapters = 256
	// MaxAcceleratorVariants bounds spec.template.accelerators.
	MaxAcceleratorVariants = 16
	// MaxRoutingPlugins bounds spec.routing.plugins.
	MaxRoutingPlugins = 16
	// MaxModelNameLength bounds spec.model and each adapter name.
	MaxModelNameLength = 253
)

// ModelService serves one model name through revisions of an engine
// template. Every change to what runs in the pods (spec.template,
// spec.model, and spec.loraAdapters going from none to some or back)
// creates the next ModelRevision; adapters added to or removed from a
// non-empty spec.loraAdapters are loaded into and unloaded from the running
// replicas instead. spec.traffic splits requests across revisions.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=msvc,categories=kvasir;all
// +kubebuilder:metadata:labels="app.kubernetes.io/name=kvasir"
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="LatestReady",type=string,JSONPath=`.status.latestReadyRevisionName`
// +kubebuilder:printcolumn:name="Traffic",type=string,JSONPath=`.status.trafficSummary`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="LatestCreated",type=string,JSONPath=`.status.latestCreatedRevisionName`,priority=1
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.spec.model`,priority=1
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 57 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS-1035 label of at most 57 characters, so that revision names <name>-00001 are DNS labels too"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.loraAdapters) || !((has(self.spec.model) && size(self.spec.model) > 0 ? self.spec.model : self.metadata.name) in self.spec.loraAdapters)",message="an adapter must not be named like the model",fieldPath=".spec.loraAdapters"
type ModelService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ModelServiceSpec   `json:"spec,omitempty"`
	Status ModelServiceStatus `json:"status,omitempty"`
}

// ModelServiceSpec is the desired state of a ModelService.
type ModelServiceSpec struct {
	// Model is the name clients send in "model"; defaults to metadata.name.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[^@]*$`
	Model string `json:"model,omitempty"`
	// LoRAAdapters are adapter names the engines serve next to the model
	// (vLLM --lora-modules at start; an adapter's name is also its path);
	// a request naming one is routed to this service, preferring replicas
	// that have it loaded (scheduler plugin lora-affinity). Adapters added
	// or removed later are loaded and unloaded at run time
	// (/v1/load_lora_adapter), with no new revision.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[^@=,\s-][^@=,\s]*$`
	LoRAAdapters []string `json:"loraAdapters,omitempty"`
	// Template is the revision template: every change creates a new revision.
	Template RevisionTemplate `json:"template"`
	// Routing selects the scheduler plugins that pick a pod. It is read by
	// the activators and is not part of a revision: changing it creates no
	// revision.
	// +optional
	Routing *RoutingSpec `json:"routing,omitempty"`
	// Traffic splits requests across revisions; absent = 100% latest ready.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:XValidation:rule="self.all(t, (has(t.revisionName) && size(t.revisionName) > 0) != (has(t.latestRevision) && t.latestRevision))",message="each traffic target sets exactly one of revisionName and latestRevision: true"
	// +kubebuilder:validation:XValidation:rule="size(self) == 0 || self.map(t, has(t.percent) ? t.percent : 0).sum() == 100",message="traffic percents must sum to 100"
	// +kubebuilder:validation:XValidation:rule="self.all(t, !has(t.tag) || size(t.tag) == 0 || self.exists_one(u, has(u.tag) && u.tag == t.tag))",message="traffic tags must be unique"
	Traffic []TrafficTarget `json:"traffic,omitempty"`
}

// EngineType names the inference engine of a template.
// +kubebuilder:validation:Enum=vllm;sglang;sim;custom
type EngineType string

// Engine types.
const (
	EngineVLLM   EngineType = "vllm"
	EngineSGLang EngineType = "sglang"
	EngineSim    EngineType = "sim"
	EngineCustom EngineType = "custom"
)

// RevisionTemplate is what a revision snapshots. The CRD checks how a
// replica's accelerators split over pods at the template's level; roles are
// checked by Validate.
//
// +kubebuilder:validation:XValidation:rule="!has(self.groupSize) || (has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) % self.groupSize == 0",message="groupSize must divide tensor × pipeline × data: every pod of a group holds the same number of accelerators",fieldPath=".groupSize"
// +kubebuilder:validation:XValidation:rule="!has(self.groupSize) || !has(self.acceleratorsPerNode) || (has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) <= self.groupSize * self.acceleratorsPerNode",message="the pods of a group would need more accelerators than acceleratorsPerNode",fieldPath=".groupSize"
// +kubebuilder:validation:XValidation:rule="has(self.groupSize) || !has(self.acceleratorsPerNode) || (has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) % (((has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) + self.acceleratorsPerNode - 1) / self.acceleratorsPerNode) == 0",message="tensor × pipeline × data does not split evenly over the pods acceleratorsPerNode gives: set groupSize or change the parallelism",fieldPath=".acceleratorsPerNode"
// +kubebuilder:validation:XValidation:rule="!has(self.accelerators) || self.accelerators.all(v, !has(v.acceleratorsPerNode) || (has(self.groupSize) ? (has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) <= self.groupSize * v.acceleratorsPerNode : (has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) % (((has(self.parallelism) ? (has(self.parallelism.tensor) ? self.parallelism.tensor : 1) * (has(self.parallelism.pipeline) ? self.parallelism.pipeline : 1) * (has(self.parallelism.data) ? self.parallelism.data : 1) : 1) + v.acceleratorsPerNode - 1) / v.acceleratorsPerNode) == 0))",message="tensor × pipeline × data does not fit, or does not split evenly over, the pods of a variant's acceleratorsPerNode",fieldPath=".accelerators"
type RevisionTemplate struct {
	// Engine is the inference engine every replica runs.
	Engine EngineSpec `json:"engine"`
	// Resources of the engine container (Kubernetes), for example
	// limits: {nvidia.com/gpu: "1"}. An accelerator variant's resources
	// replace them.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// Accelerators are alternative placements of a replica, cheapest used
	// first.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Accelerators []AcceleratorVariant `json:"accelerators,omitempty"`
	// Parallelism splits each replica over tensor × pipeline × data
	// accelerators, and over several pods (a serving group) when they do
	// not fit one node: Kvasir derives the pods per replica and the
	// engine's parallelism flags from it (docs/engines.md). Absent: one
	// pod per replica and no parallelism flags (the engine's own defaults,
	// or the template's args). Resources stay per pod: give each pod its
	// share of the accelerators.
	// +optional
	Parallelism *ParallelismSpec `json:"parallelism,omitempty"`
	// AcceleratorsPerNode is how many accelerators one node gives one pod
	// of a replica. A replica needing more is split into
	// ceil(tensor × pipeline × data / acceleratorsPerNode) pods, for
	// example tensor 8 × pipeline 2 on 8-accelerator nodes into 2 pods. An
	// accelerator variant's own value replaces it. Absent: every replica
	// is one pod, unless groupSize says otherwise.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	AcceleratorsPerNode *int32 `json:"acceleratorsPerNode,omitempty"`
	// GroupSize is the number of pods of one replica, overriding the size
	// derived from parallelism and acceleratorsPerNode. Pod 0 of a group,
	// the leader, serves the API; the others are workers. It must divide
	// tensor × pipeline × data: every pod holds the same number of
	// accelerators.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	GroupSize *int32 `json:"groupSize,omitempty"`
	// TopologyKey is a node label key, for example
	// topology.kubernetes.io/zone or a rack or network-block label: all
	// pods of one serving group are placed in one domain of that key
	// (nodes with the same value), and a domain holds one group at a time
	// (LeaderWorkerSet's exclusive topology, docs/kubernetes.md). It
	// applies to replicas of several pods on Kubernetes only: a one-pod
	// replica is not placed by it, and kvasir local ignores it. A role's
	// own topologyKey replaces it.
	// +optional
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`
	TopologyKey string `json:"topologyKey,omitempty"`
	// Roles splits a revision into prefill and decode replica sets; absent =
	// one unified role.
	// +optional
	Roles *RolesSpec `json:"roles,omitempty"`
	// Scaling bounds and targets the autoscaler.
	// +optional
	Scaling ScalingSpec `json:"scaling,omitempty"`
	// ContainerConcurrency limits requests per replica at the queue-proxy; 0 = unlimited.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ContainerConcurrency int `json:"containerConcurrency,omitempty"`
	// TimeoutSeconds bounds one request end to end; defaults to 600.
	// +optional
	// +kubebuilder:validation:Minimum=0
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// ParallelismSpec is how one replica of the model is split over
// accelerators: tensor × pipeline × data of them. Unset sizes are 1.
// Data parallelism inside a replica is for mixture-of-experts models, whose
// data-parallel ranks share the expert layers; a dense model scales with
// more replicas instead.
//
// +kubebuilder:validation:XValidation:rule="!has(self.expert) || !self.expert || (has(self.tensor) ? self.tensor : 1) * (has(self.data) ? self.data : 1) > 1",message="expert parallelism needs tensor × data > 1",fieldPath=".expert"
// +kubebuilder:validation:XValidation:rule="(has(self.tensor) ? self.tensor : 1) * (has(self.pipeline) ? self.pipeline : 1) * (has(self.data) ? self.data : 1) <= 1024",message="tensor × pipeline × data must be at most 1024 accelerators per replica"
type ParallelismSpec struct {
	// Tensor is the tensor-parallel size: every layer split over this many
	// accelerators. Default 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	Tensor *int32 `json:"tensor,omitempty"`
	// Pipeline is the pipeline-parallel size: the layers split into this
	// many stages. Default 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	Pipeline *int32 `json:"pipeline,omitempty"`
	// Data is the data-parallel size: this many attention ranks, each
	// tensor × pipeline accelerators, behind the replica's one endpoint.
	// Default 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	Data *int32 `json:"data,omitempty"`
	// Expert runs a mixture-of-experts model's expert layers with expert
	// parallelism over all tensor × data ranks instead of tensor
	// parallelism. Needs tensor × data > 1.
	// +optional
	Expert bool `json:"expert,omitempty"`
}

// EngineSpec describes the engine container (Kubernetes) or process (local).
//
// +kubebuilder:validation:XValidation:rule="!has(self.type) || self.type != 'custom' || (has(self.command) && size(self.command) > 0) || (has(self.image) && size(self.image) > 0)",message="a custom engine needs command or image"
// +kubebuilder:validation:XValidation:rule="!has(self.tokenizer) || self.tokenizer.type != 'file'",message="tokenizer.type file is read from kvasir local's filesystem; on Kubernetes use type engine"
type EngineSpec struct {
	// Type of the engine; defaults to vllm.
	// +optional
	Type EngineType `json:"type,omitempty"`
	// Image of the engine container (Kubernetes only).
	// +optional
	Image string `json:"image,omitempty"`
	// Command of a custom engine (the process in local mode, the
	// container's entrypoint on Kubernetes). $(PORT), $(HOST) and
	// $(KV_EVENTS_PORT) expand in command and args; vllm, sglang and sim
	// have their own command (docs/engines.md).
	// +optional
	Command []string `json:"command,omitempty"`
	// Args are appended to the engine's command.
	// +optional
	Args []string `json:"args,omitempty"`
	// Env of the engine.
	// +optional
	Env []corev1.EnvVar `json:"env,omitempty"`
	// Port the engine listens on; defaults to 8000.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`
	// HealthPath is where the queue-proxy probes the engine's readiness;
	// defaults per engine type (see docs/engines.md): /health.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^/[!-~]*$`
	HealthPath string `json:"healthPath,omitempty"`
	// MetricsPath is where the queue-proxy scrapes the engine's Prometheus
	// metrics; defaults per engine type: /metrics.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^/[!-~]*$`
	MetricsPath string `json:"metricsPath,omitempty"`
	// KVEvents is where the engine publishes its KV-cache events (ZMQ,
	// msgpack, vLLM's schema); the queue-proxy follows them and feeds the
	// routers' prefix index with them. Defaulted per engine type.
	// +optional
	KVEvents *KVEventsSpec `json:"kvEvents,omitempty"`
	// Tokenizer is how the routers tokenize a prompt as the engine does, so
	// that their prefix keys and the engine's KV events name the same
	// blocks. Defaulted per engine type; without one, routers model each
	// engine's cache from the prompts they send (approximate).
	// +optional
	Tokenizer *TokenizerSpec `json:"tokenizer,omitempty"`
}

// KVEventsSpec is an engine's KV-cache event publisher.
type KVEventsSpec struct {
	// Enabled turns the engine's events on or off. Default: on for vllm,
	// sglang and sim; on for custom when endpoint is set.
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// Endpoint is the ZMQ endpoint the engine publishes to; $(KV_EVENTS_PORT)
	// expands to a port Kvasir reserves for it. Default
	// tcp://127.0.0.1:$(KV_EVENTS_PORT): the queue-proxy binds it on loopback
	// and the engine connects. A wildcard host (tcp://*:P) means the engine
	// binds and the queue-proxy connects to 127.0.0.1:P.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^tcp://`
	Endpoint string `json:"endpoint,omitempty"`
	// Topic the queue-proxy subscribes to ("" for every topic).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Topic string `json:"topic,omitempty"`
}

// TokenizerType names how routers tokenize.
// +kubebuilder:validation:Enum=none;builtin;file;engine
type TokenizerType string

// Tokenizer types.
const (
	// TokenizerNone: no tokenizer; prefix routing is approximate.
	TokenizerNone TokenizerType = "none"
	// TokenizerBuiltin: the deterministic four-bytes-a-token tokenizer of
	// pkg/prompt, which the simulator uses by default.
	TokenizerBuiltin TokenizerType = "builtin"
	// TokenizerFile: a Hugging Face tokenizer.json at path, read by every
	// activator (local mode), never downloaded.
	TokenizerFile TokenizerType = "file"
	// TokenizerEngine: the engine's own tokenization endpoint at path
	// (vLLM's POST /tokenize), asked through a ready replica's queue-proxy.
	TokenizerEngine TokenizerType = "engine"
)

// TokenizerSpec is how routers tokenize prompts as the engine does.
type TokenizerSpec struct {
	// Type of tokenizer.
	Type TokenizerType `json:"type"`
	// Path of the tokenizer.json (file) or the engine's endpoint (engine,
	// default /tokenize).
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Path string `json:"path,omitempty"`
}

// AcceleratorVariant is one way to place a replica, with its relative cost.
type AcceleratorVariant struct {
	// Name of the variant, unique within the template.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
	// Resources of the engine container on this variant.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// NodeSelector places the replica on nodes with this accelerator.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Cost relative to the other variants; the cheapest with capacity is
	// used first.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Cost float64 `json:"cost,omitempty"`
	// AcceleratorsPerNode replaces the template's acceleratorsPerNode on
	// this variant's nodes: the same replica may need more pods on
	// smaller nodes.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	AcceleratorsPerNode *int32 `json:"acceleratorsPerNode,omitempty"`
}

// RolesSpec splits a revision into prefill and decode replica sets.
//
// +kubebuilder:validation:XValidation:rule="has(self.prefill) && has(self.decode)",message="roles needs both prefill and decode"
type RolesSpec struct {
	// +optional
	Prefill *RoleSpec `json:"prefill,omitempty"`
	// +optional
	Decode *RoleSpec `json:"decode,omitempty"`
	// Ratio keeps the prefill replicas within bounds per decode replica;
	// each role otherwise scales on its own signals. The prefill role's
	// minScale and maxScale still bound it.
	// +optional
	Ratio *RoleRatio `json:"ratio,omitempty"`
}

// RoleRatio bounds prefill replicas per decode replica, for example
// {min: 0.25, max: 1}: one prefill replica for every four decode replicas
// at least, and no more prefill than decode replicas.
//
// +kubebuilder:validation:XValidation:rule="!has(self.min) || !has(self.max) || self.min <= self.max",message="min must be <= max"
type RoleRatio struct {
	// Min prefill replicas per decode replica (rounded up).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Min *float64 `json:"min,omitempty"`
	// Max prefill replicas per decode replica (rounded down, at least one
	// while decode runs).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	Max *float64 `json:"max,omitempty"`
}

// RoleSpec overrides scaling, parallelism, group size, topology key and
// engine args for one role.
type RoleSpec struct {
	// Scaling of this role; unset fields come from the template's.
	// +optional
	Scaling *ScalingSpec `json:"scaling,omitempty"`
	// Parallelism of this role's replicas, for example tensor 8 for
	// prefill and data 16 with expert parallelism for decode. It replaces
	// the template's parallelism and groupSize together: unset, the role
	// has the template's.
	// +optional
	Parallelism *ParallelismSpec `json:"parallelism,omitempty"`
	// GroupSize of this role's replicas, overriding the derived size (see
	// the template's groupSize).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	GroupSize *int32 `json:"groupSize,omitempty"`
	// TopologyKey of this role's serving groups, replacing the template's
	// (see the template's topologyKey).
	// +optional
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`
	TopologyKey string `json:"topologyKey,omitempty"`
	// Args are appended to the engine's arguments for this role.
	// +optional
	Args []string `json:"args,omitempty"`
}

// ScalingSpec bounds and targets the autoscaler.
//
// +kubebuilder:validation:XValidation:rule="!has(self.minScale) || !has(self.maxScale) || self.maxScale == 0 || self.minScale <= self.maxScale",message="minScale must be <= maxScale",fieldPath=".minScale"
type ScalingSpec struct {
	// MinScale is the lower bound of replicas; 0 allows scale to zero.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MinScale *int32 `json:"minScale,omitempty"`
	// MaxScale is the upper bound of replicas; 0 = bounded by capacity only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MaxScale *int32 `json:"maxScale,omitempty"`
	// InitialScale is the number of replicas a new revision starts with.
	// +optional
	// +kubebuilder:validation:Minimum=0
	InitialScale *int32 `json:"initialScale,omitempty"`
	// Target is the per-replica target of the autoscaler's signals.
	// +optional
	Target *ScalingTarget `json:"target,omitempty"`
	// ScaleToZeroGracePeriod is how long the last replica stays after
	// traffic stops.
	// +optional
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s')",message="must be >= 0"
	ScaleToZeroGracePeriod *metav1.Duration `json:"scaleToZeroGracePeriod,omitempty"`
	// StableWindow is the window the autoscaler averages over.
	// +optional
	StableWindow *metav1.Duration `json:"stableWindow,omitempty"`
	// PanicWindowPercent is the panic window as a percent of the stable
	// window.
	// +optional
	PanicWindowPercent *int32 `json:"panicWindowPercent,omitempty"`
	// PanicThresholdPercent is the load, in percent of the target, that
	// enters panic mode.
	// +optional
	PanicThresholdPercent *int32 `json:"panicThresholdPercent,omitempty"`
}

// ScalingTarget is the per-replica target of one or several signals.
type ScalingTarget struct {
	// Concurrency is in-flight plus buffered requests per replica.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	Concurrency *float64 `json:"concurrency,omitempty"`
	// KVCacheUsage is the engine's KV-cache usage, a fraction in (0, 1].
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	// +kubebuilder:validation:Maximum=1
	KVCacheUsage *float64 `json:"kvCacheUsage,omitempty"`
	// WaitingRequests is the engine's waiting queue per replica.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	WaitingRequests *float64 `json:"waitingRequests,omitempty"`
	// TokensPerSecond is generated tokens per second per replica.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	TokensPerSecond *float64 `json:"tokensPerSecond,omitempty"`
	// CPU is CPU cores used per replica, all its containers together, as
	// the resource metrics API (metrics.k8s.io, served by metrics-server)
	// reports them. Kubernetes only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	CPU *float64 `json:"cpu,omitempty"`
	// MemoryGiB is memory used per replica in GiB, all its containers
	// together, from the resource metrics API. Kubernetes only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:ExclusiveMinimum=true
	MemoryGiB *float64 `json:"memoryGiB,omitempty"`
}

// RoutingSpec lists scheduler plugins with weights.
type RoutingSpec struct {
	// Plugins, each at most once.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=16
	Plugins []RoutingPlugin `json:"plugins,omitempty"`
}

// RoutingPlugin names one scheduler plugin, its weight (scorers; default 1)
// and its typed configuration (see docs/routing.md for each plugin's fields).
type RoutingPlugin struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	Weight int `json:"weight,omitempty"`
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	Config *runtime.RawExtension `json:"config,omitempty"`
}

// TrafficTarget sends a percent of requests to a revision. In spec.traffic
// exactly one of RevisionName and LatestRevision is set; in status.traffic
// RevisionName is always the resolved revision, LatestRevision says whether
// it follows the latest ready one, and URL is the tag's address.
type TrafficTarget struct {
	// RevisionName pins this target to one revision.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	RevisionName string `json:"revisionName,omitempty"`
	// LatestRevision makes this target follow the latest ready revision.
	// +optional
	LatestRevision *bool `json:"latestRevision,omitempty"`
	// Percent of requests without a tag that go to this target.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent *int64 `json:"percent,omitempty"`
	// Tag addresses this target alone: header X-Kvasir-Tag: <tag>, or
	// "model": "<model>@<tag>".
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Tag string `json:"tag,omitempty"`
	// URL of the tag (status only).
	// +optional
	URL string `json:"url,omitempty"`
}

// ModelServiceStatus is the observed state.
type ModelServiceStatus struct {
	duckv1.Status `json:",inline"`

	// URL clients send requests to.
	// +optional
	URL string `json:"url,omitempty"`
	// LatestCreatedRevisionName is the revision cut from the current spec.
	// +optional
	LatestCreatedRevisionName string `json:"latestCreatedRevisionName,omitempty"`
	// LatestReadyRevisionName is the newest revision that became ready.
	// +optional
	LatestReadyRevisionName string `json:"latestReadyRevisionName,omitempty"`
	// Traffic is spec.traffic resolved to revisions, with per-tag URLs.
	// +optional
	// +listType=atomic
	Traffic []TrafficTarget `json:"traffic,omitempty"`
	// TrafficSummary is Traffic in one line for kubectl, for example
	// "llama-00001=90%, llama-00002=10%@canary" (see SetTraffic).
	// +optional
	TrafficSummary string `json:"trafficSummary,omitempty"`
}

// ModelServiceList is a list of ModelServices.
//
// +kubebuilder:object:root=true
type ModelServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ModelService `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ModelService{}, &ModelServiceList{})
}
