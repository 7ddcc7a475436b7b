package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// Bounds of the Tenant API. The CRD carries them too (CEL cost estimation
// needs bounded lists and strings); Validate checks them with field paths.
const (
	// MaxTenantNameLength keeps a tenant's name a DNS label (it is a metrics
	// label value too).
	MaxTenantNameLength = 63
	// MaxTenantAPIKeys bounds spec.apiKeys.
	MaxTenantAPIKeys = 64
	// MaxTenantModels bounds spec.models.
	MaxTenantModels = 256
	// MaxTenantLimits bounds spec.limits.
	MaxTenantLimits = 64
	// MaxTenantModelLength bounds a model reference: a model name, "@" and
	// a traffic tag (a DNS label).
	MaxTenantModelLength = MaxModelNameLength + 1 + 63
	// MaxEnvNameLength bounds spec.apiKeys[].fromEnv.
	MaxEnvNameLength = 256
)

// AllModels in spec.models or spec.limits[].model stands for every model.
const AllModels = "*"

// Tenant is a client of Kvasir: the API keys it authenticates with, the
// models it may call, its share and priority when the fleet is saturated,
// and its rate limits. Plain keys never stand in the object: a key is given
// as its SHA-256, as a reference to a Secret (Kubernetes) or as the name of
// an environment variable (kvasir local).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=kvasir
// +kubebuilder:metadata:labels="app.kubernetes.io/name=kvasir"
// +kubebuilder:printcolumn:name="Priority",type=string,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Weight",type=integer,JSONPath=`.spec.weight`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Models",type=string,JSONPath=`.spec.models`,priority=1
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS-1035 label (it names the tenant in metrics)"
type Tenant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   TenantSpec   `json:"spec,omitempty"`
	Status TenantStatus `json:"status,omitempty"`
}

// TenantPriority is a tenant's class when requests wait for capacity:
// critical before standard before sheddable, and sheddable refused first
// under overload.
// +kubebuilder:validation:Enum=critical;standard;sheddable
type TenantPriority string

// Tenant priorities.
const (
	// PriorityCritical is released first and refused last.
	PriorityCritical TenantPriority = "critical"
	// PriorityStandard is the default.
	PriorityStandard TenantPriority = "standard"
	// PrioritySheddable is released last and refused first under overload.
	PrioritySheddable TenantPriority = "sheddable"
)

// TenantSpec is the desired state of a Tenant.
type TenantSpec struct {
	// APIKeys are the keys clients of this tenant authenticate with
	// (Authorization: Bearer KEY, or api-key: KEY). Each sets exactly one of
	// sha256, secretKeyRef and fromEnv.
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	APIKeys []APIKey `json:"apiKeys"`
	// Priority is the tenant's class when requests wait for capacity:
	// critical, standard (the default) or sheddable.
	// +optional
	Priority TenantPriority `json:"priority,omitempty"`
	// Weight is the tenant's share of the fleet under contention, relative
	// to the other tenants of its priority class; defaults to 1.
	// +optional
	// +kubebuilder:validation:Minimum=1
	Weight *int32 `json:"weight,omitempty"`
	// Models this tenant may call: model names as clients send them, a
	// traffic tag included ("llama@canary"), or "*" for every model.
	// Defaults to ["*"].
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=317
	// +kubebuilder:validation:items:Pattern=`^[^@]+(@[a-z]([-a-z0-9]*[a-z0-9])?)?$`
	Models []string `json:"models,omitempty"`
	// Limits are the tenant's rate and concurrency limits, at most one per
	// model ("*" for the tenant's traffic to all models together).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:XValidation:rule="self.all(l, self.exists_one(m, (has(m.model) ? m.model : '*') == (has(l.model) ? l.model : '*')))",message="each model has at most one limit (an unset model is \"*\")"
	Limits []TenantLimit `json:"limits,omitempty"`
}

// APIKey is one key of a tenant, given without the key itself. The formats
// of sha256 and fromEnv are CEL rules rather than patterns, so that the API
// server's errors never echo a key written there by mistake.
//
// +kubebuilder:validation:XValidation:rule="(has(self.sha256) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) + (has(self.fromEnv) ? 1 : 0) == 1",message="an API key sets exactly one of sha256, secretKeyRef and fromEnv"
// +kubebuilder:validation:XValidation:rule="!has(self.sha256) || self.sha256.matches('^[0-9a-f]{64}$')",message="sha256 must be 64 lowercase hexadecimal characters: the SHA-256 of the key, never the key",fieldPath=".sha256"
// +kubebuilder:validation:XValidation:rule="!has(self.fromEnv) || self.fromEnv.matches('^[A-Za-z_][A-Za-z0-9_]*$')",message="fromEnv must be the name of an environment variable, never the key",fieldPath=".fromEnv"
type APIKey struct {
	// SHA256 is the SHA-256 digest of the key, in lowercase hexadecimal
	// (`printf %s "$KEY" | sha256sum`). Usable anywhere.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	SHA256 string `json:"sha256,omitempty"`
	// SecretKeyRef names a key of a Secret in the Tenant's namespace that
	// holds the key (Kubernetes only; kvasir local has no Secrets).
	// +optional
	SecretKeyRef *SecretKeySelector `json:"secretKeyRef,omitempty"`
	// FromEnv names an environment variable of kvasir local that holds the
	// key (kvasir local only).
	// +optional
	// +kubebuilder:validation:MaxLength=256
	FromEnv string `json:"fromEnv,omitempty"`
}

// SecretKeySelector selects a key of a Secret in the referring object's
// namespace, like corev1.SecretKeySelector but never optional.
type SecretKeySelector struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
	// Key of the Secret's data that holds the API key.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key"`
}

// TenantLimit bounds a tenant's traffic to one model, or to all its models
// together ("*"). At least one bound is set; unset bounds do not limit.
//
// +kubebuilder:validation:XValidation:rule="has(self.requestsPerMinute) || has(self.tokensPerMinute) || has(self.inputTokensPerMinute) || has(self.outputTokensPerMinute) || has(self.maxConcurrentRequests)",message="a limit sets at least one of requestsPerMinute, tokensPerMinute, inputTokensPerMinute, outputTokensPerMinute and maxConcurrentRequests"
type TenantLimit struct {
	// Model the limit applies to, as in spec.models, or "*" (the default)
	// for the tenant's traffic to all models together.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^[^@]+(@[a-z]([-a-z0-9]*[a-z0-9])?)?$`
	Model string `json:"model,omitempty"`
	// RequestsPerMinute bounds requests started per minute.
	// +optional
	// +kubebuilder:validation:Minimum=1
	RequestsPerMinute *int64 `json:"requestsPerMinute,omitempty"`
	// TokensPerMinute bounds input and output tokens together per minute.
	// +optional
	// +kubebuilder:validation:Minimum=1
	TokensPerMinute *int64 `json:"tokensPerMinute,omitempty"`
	// InputTokensPerMinute bounds prompt tokens per minute.
	// +optional
	// +kubebuilder:validation:Minimum=1
	InputTokensPerMinute *int64 `json:"inputTokensPerMinute,omitempty"`
	// OutputTokensPerMinute bounds generated tokens per minute.
	// +optional
	// +kubebuilder:validation:Minimum=1
	OutputTokensPerMinute *int64 `json:"outputTokensPerMinute,omitempty"`
	// MaxConcurrentRequests bounds requests in flight at once.
	// +optional
	// +kubebuilder:validation:Minimum=1
	MaxConcurrentRequests *int64 `json:"maxConcurrentRequests,omitempty"`
}

// TenantStatus is the observed state: observedGeneration and the Ready
// condition (its keys resolved, for example the Secrets they name found).
type TenantStatus struct {
	duckv1.Status `json:",inline"`
}

// TenantList is a list of Tenants.
//
// +kubebuilder:object:root=true
type TenantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Tenant `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Tenant{}, &TenantList{})
}
