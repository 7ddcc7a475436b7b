package autoscaler

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// VariantsOf returns the placement variants of a template's unified role
// (a split template's decode role): RoleVariantsOf(t, fleet.RoleUnified).
func VariantsOf(t *v1alpha1.RevisionTemplate) []Variant {
	return RoleVariantsOf(t, fleet.RoleUnified)
}

// RoleVariantsOf returns the placement variants of a role's replicas,
// cheapest first: one per accelerator variant, or one unnamed variant
// taking the template's own accelerators. A replica that is a serving group
// (t.Group(role, v) of several pods) needs the accelerators of all its pods
// together, so that it is placed whole or not at all: Need is one pod's
// resources times Pods. Current counts are zero.
func RoleVariantsOf(t *v1alpha1.RevisionTemplate, role string) []Variant {
	if len(t.Accelerators) == 0 {
		return []Variant{groupVariant(t, role, nil, Variant{Need: AcceleratorNeed(t.VariantResources(nil))})}
	}
	var out []Variant
	for _, v := range t.AcceleratorsByCost() {
		out = append(out, groupVariant(t, role, &v, Variant{Name: v.Name, Cost: v.Cost, Need: AcceleratorNeed(t.VariantResources(&v))}))
	}
	return out
}

// groupVariant sets out's Pods from role's group on variant v (nil: the
// template's placement) and multiplies its one-pod Need by them. A template
// that fails validation counts as one pod a replica.
func groupVariant(t *v1alpha1.RevisionTemplate, role string, v *v1alpha1.AcceleratorVariant, out Variant) Variant {
	out.Pods = 1
	g, err := t.Group(role, v)
	if err != nil || g.Pods <= 1 {
		return out
	}
	out.Pods = int(g.Pods)
	for res, n := range out.Need {
		out.Need[res] = n * out.Pods
	}
	return out
}

// AcceleratorNeed is what one replica with these resources takes of
// accelerators: its extended resources (names with a domain, such as
// nvidia.com/gpu or huawei.com/ascend-910b), the larger of request and
// limit. Nil when none.
func AcceleratorNeed(r corev1.ResourceRequirements) map[string]int {
	need := map[string]int{}
	add := func(l corev1.ResourceList) {
		for name, q := range l {
			if n := string(name); IsAccelerator(n) {
				need[n] = max(need[n], int(q.Value()))
			}
		}
	}
	add(r.Requests)
	add(r.Limits)
	if len(need) == 0 {
		return nil
	}
	return need
}

// IsAccelerator tells an extended resource (an accelerator for placement)
// from cpu, memory, ephemeral-storage and hugepages.
func IsAccelerator(name string) bool {
	return strings.Contains(name, "/") && !strings.HasPrefix(name, "hugepages-")
}

// ConfigOf turns a defaulted scaling spec into the decider's config; the
// initial scale is given apart (callers bound it by minScale, maxScale and
// what else they know).
func ConfigOf(sc v1alpha1.ScalingSpec, initial int) Config {
	cfg := Config{InitialScale: initial}
	if sc.MinScale != nil {
		cfg.MinScale = int(*sc.MinScale)
	}
	if sc.MaxScale != nil {
		cfg.MaxScale = int(*sc.MaxScale)
	}
	if sc.StableWindow != nil {
		cfg.StableWindow = sc.StableWindow.Duration
	}
	if sc.ScaleToZeroGracePeriod != nil {
		cfg.ScaleToZeroGracePeriod = sc.ScaleToZeroGracePeriod.Duration
	}
	if sc.PanicWindowPercent != nil {
		cfg.PanicWindowPercent = float64(*sc.PanicWindowPercent)
	}
	if sc.PanicThresholdPercent != nil {
		cfg.PanicThresholdPercent = float64(*sc.PanicThresholdPercent)
	}
	if tg := sc.Target; tg != nil {
		cfg.Targets = Targets{Concurrency: tg.Concurrency, KVCacheUsage: tg.KVCacheUsage,
			WaitingRequests: tg.WaitingRequests, TokensPerSecond: tg.TokensPerSecond, CPU: tg.CPU, MemoryGiB: tg.MemoryGiB}
	}
	if cfg.Targets == (Targets{}) {
		c := v1alpha1.DefaultTargetConcurrency
		cfg.Targets.Concurrency = &c
	}
	return cfg
}

// InitialScale is a role's first replica count: initialScale, at least
// minScale (and least), at most maxScale when bounded.
func InitialScale(sc v1alpha1.ScalingSpec, least int) int {
	n := least
	if sc.InitialScale != nil {
		n = max(n, int(*sc.InitialScale))
	}
	if sc.MinScale != nil {
		n = max(n, int(*sc.MinScale))
	}
	if sc.MaxScale != nil && *sc.MaxScale > 0 {
		n = min(n, int(*sc.MaxScale))
	}
	return n
}
