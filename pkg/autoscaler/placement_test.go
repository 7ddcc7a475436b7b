package autoscaler

import (
	"maps"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPlace(t *testing.T) {
	gpu := map[string]int{"nvidia.com/gpu": 1}
	gpu2 := map[string]int{"nvidia.com/gpu": 2}
	npu := map[string]int{"huawei.com/ascend-910b": 1}
	variants := func(cur ...int) []Variant {
		return []Variant{
			{Name: "h100", Need: gpu, Cost: 3, Current: cur[0]},
			{Name: "ascend", Need: npu, Cost: 2, Current: cur[1]},
		}
	}
	for _, tc := range []struct {
		name        string
		variants    []Variant
		free        map[string]int
		n           int
		want        []int
		unplaceable int
		missing     []string
	}{
		{name: "no accelerators fit without limit", variants: []Variant{{}}, n: 7, want: []int{7}},
		{name: "single variant capped by capacity", variants: []Variant{{Need: gpu}},
			free: map[string]int{"nvidia.com/gpu": 2}, n: 5, want: []int{2}, unplaceable: 3, missing: []string{"nvidia.com/gpu"}},
		{name: "running replicas need no free capacity", variants: []Variant{{Need: gpu, Current: 2}},
			free: map[string]int{}, n: 2, want: []int{2}},
		{name: "cheapest first", variants: variants(0, 0),
			free: map[string]int{"nvidia.com/gpu": 4, "huawei.com/ascend-910b": 4}, n: 3, want: []int{0, 3}},
		{name: "spill to the next when the cheapest runs out", variants: variants(0, 0),
			free: map[string]int{"nvidia.com/gpu": 4, "huawei.com/ascend-910b": 2}, n: 5, want: []int{3, 2}},
		{name: "growth keeps running replicas where they are", variants: variants(1, 0),
			free: map[string]int{"nvidia.com/gpu": 4, "huawei.com/ascend-910b": 2}, n: 2, want: []int{1, 1}},
		{name: "both exhausted", variants: variants(0, 0),
			free: map[string]int{"nvidia.com/gpu": 1, "huawei.com/ascend-910b": 1}, n: 4, want: []int{1, 1},
			unplaceable: 2, missing: []string{"huawei.com/ascend-910b", "nvidia.com/gpu"}},
		{name: "a resource the pool lacks fits none", variants: variants(0, 0),
			free: map[string]int{"nvidia.com/gpu": 1}, n: 2, want: []int{1, 0},
			unplaceable: 1, missing: []string{"huawei.com/ascend-910b", "nvidia.com/gpu"}},
		{name: "shrink the expensive first", variants: variants(3, 2), n: 3, want: []int{1, 2}},
		{name: "shrink past the expensive", variants: variants(1, 2), n: 1, want: []int{0, 1}},
		{name: "to zero", variants: variants(1, 2), n: 0, want: []int{0, 0}},
		{name: "variants sharing a resource do not overcommit it", variants: []Variant{
			{Name: "one-gpu", Need: gpu, Cost: 1}, {Name: "two-gpu", Need: gpu2, Cost: 2}},
			free: map[string]int{"nvidia.com/gpu": 3}, n: 4, want: []int{3, 0}, unplaceable: 1, missing: []string{"nvidia.com/gpu"}},
		{name: "equal cost keeps the order given", variants: []Variant{
			{Name: "a", Need: gpu, Cost: 1}, {Name: "b", Need: npu, Cost: 1}},
			free: map[string]int{"nvidia.com/gpu": 1, "huawei.com/ascend-910b": 1}, n: 2, want: []int{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			free := maps.Clone(tc.free)
			p := Place(tc.variants, tc.free, tc.n)
			require.Equal(t, tc.want, p.Counts)
			require.Equal(t, tc.unplaceable, p.Unplaceable)
			require.Equal(t, tc.missing, p.Missing)
			require.Equal(t, tc.n-tc.unplaceable, p.Total())
			require.Equal(t, free, tc.free, "free is not modified")
		})
	}
	p := Place([]Variant{{Need: gpu}}, nil, 2)
	require.Equal(t, "2 replica(s) cannot be placed: not enough free nvidia.com/gpu", p.Message())
}
