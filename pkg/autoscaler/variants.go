package autoscaler

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// VariantsOf returns the placement variants of a template, cheapest first:
// one per accelerator variant, or one unnamed variant taking the
// template's own accelerators. Current counts are zero.
func VariantsOf(t *v1alpha1.RevisionTemplate) []Variant {
	if len(t.Accelerators) == 0 {
		return []Variant{{Need: AcceleratorNeed(t.VariantResources(nil))}}
	}
	var out []Variant
	for _, v := range t.AcceleratorsByCost() {
		out = append(out, Variant{Name: v.Name, Cost: v.Cost, Need: AcceleratorNeed(t.VariantResources(&v))})
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
