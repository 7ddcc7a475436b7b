package activator

import (
	"cmp"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// ServiceConfigOf is the data-plane view of a ModelService whose traffic
// resolved to targets: the model name (the service's name when spec.model
// is empty), its LoRA adapters and its routing plugins. Revisions are left
// to the caller (RevisionConfigOf), which knows which ones serve.
func ServiceConfigOf(ms *v1alpha1.ModelService, targets []traffic.Target) ServiceConfig {
	sc := ServiceConfig{Namespace: ms.Namespace, Name: ms.Name, Model: ms.Spec.Model,
		LoRAAdapters: ms.Spec.LoRAAdapters, Traffic: targets}
	if sc.Model == "" {
		sc.Model = ms.Name
	}
	if ms.Spec.Routing != nil {
		sc.Routing = ms.Spec.Routing.Plugins
	}
	return sc
}

// RevisionConfigOf is the data-plane view of the revision name made from
// template t (a ModelRevision's spec, or in local mode the service's
// template when the revision was made).
func RevisionConfigOf(name string, t *v1alpha1.RevisionTemplate) RevisionConfig {
	return RevisionConfig{Name: name,
		ContainerConcurrency: t.ContainerConcurrency,
		Timeout:              time.Duration(t.TimeoutSeconds) * time.Second,
		Disaggregated:        t.Roles != nil,
		Tokenizer:            engine.Resolve(t.Engine).RoutingTokenizer()}
}

// TenantConfigOf is the data-plane view of a Tenant whose keys resolved to
// digests (pkg/tenant: the order of spec.apiKeys). Unset priority, weight
// and models (absent, not empty) take the API's defaults, as does an unset
// spec.limits[].model ("*"); the limits are copied in their order, unset
// bounds as zero (unlimited). SetTenants checks them.
func TenantConfigOf(t *v1alpha1.Tenant, digests [][32]byte) TenantConfig {
	tc := TenantConfig{Namespace: t.Namespace, Name: t.Name, Keys: digests, Priority: t.Spec.Priority,
		Weight: v1alpha1.DefaultTenantWeight, Models: t.Spec.Models}
	if tc.Priority == "" {
		tc.Priority = v1alpha1.DefaultTenantPriority
	}
	if t.Spec.Weight != nil {
		tc.Weight = *t.Spec.Weight
	}
	if tc.Models == nil {
		tc.Models = []string{v1alpha1.AllModels}
	}
	for _, l := range t.Spec.Limits {
		tc.Limits = append(tc.Limits, limitRuleOf(l))
	}
	return tc
}

// limitRuleOf is the data-plane view of one of spec.limits.
func limitRuleOf(l v1alpha1.TenantLimit) LimitRule {
	deref := func(v *int64) int64 {
		if v == nil {
			return 0
		}
		return *v
	}
	r := LimitRule{Model: cmp.Or(l.Model, v1alpha1.AllModels)}
	r.Limits.RequestsPerMinute = deref(l.RequestsPerMinute)
	r.Limits.TokensPerMinute = deref(l.TokensPerMinute)
	r.Limits.InputTokensPerMinute = deref(l.InputTokensPerMinute)
	r.Limits.OutputTokensPerMinute = deref(l.OutputTokensPerMinute)
	r.Limits.MaxConcurrentRequests = deref(l.MaxConcurrentRequests)
	return r
}
