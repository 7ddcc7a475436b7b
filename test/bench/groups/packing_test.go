package main

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
)

// gv is a variant of a group of pods pods taking need of res in all.
func gv(res string, need, pods int) autoscaler.Variant {
	return autoscaler.Variant{Need: map[string]int{res: need}, Pods: pods}
}

const gpu = "nvidia.com/gpu"

func TestBestPacking(t *testing.T) {
	nodes := func(sizes ...int) []node {
		var out []node
		for _, s := range sizes {
			out = append(out, node{gpu: s})
		}
		return out
	}
	twoVendors := []node{{gpu: 8}, {"amd.com/gpu": 8}}
	shared := []packRole{
		{Name: "x", Variants: []autoscaler.Variant{gv(gpu, 4, 2), gv("amd.com/gpu", 4, 2)}},
		{Name: "y", Variants: []autoscaler.Variant{gv(gpu, 8, 1)}},
	}
	for _, tc := range []struct {
		name   string
		nodes  []node
		roles  []packRole
		demand []int
		floor  [][]int
		want   [][]int // nil: not ok
		used   int
		err    error
	}{
		{name: "three whole groups of 2 on 7, five wanted", nodes: nodes(7),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 2, 2)}}}, demand: []int{5},
			want: [][]int{{3}}, used: 6},
		{name: "groups of 6 and 8 on 16: two of 8", nodes: nodes(16),
			roles:  []packRole{{Variants: []autoscaler.Variant{gv(gpu, 6, 3)}}, {Variants: []autoscaler.Variant{gv(gpu, 8, 2)}}},
			demand: []int{2, 2}, want: [][]int{{0}, {2}}, used: 16},
		{name: "groups of 6 and 8 on 14: one of each", nodes: nodes(14),
			roles:  []packRole{{Variants: []autoscaler.Variant{gv(gpu, 6, 3)}}, {Variants: []autoscaler.Variant{gv(gpu, 8, 2)}}},
			demand: []int{2, 2}, want: [][]int{{1}, {1}}, used: 14},
		{name: "a pod of 8 fits no node of 5", nodes: nodes(5, 5),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 8, 1)}}}, demand: []int{1}, want: [][]int{{0}}},
		{name: "the same pod of 8 on the count model of those nodes", nodes: countModel(nodes(5, 5)),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 8, 1)}}}, demand: []int{1}, want: [][]int{{1}}, used: 8},
		{name: "3 pods of 2 do not fit nodes of 3 and 3", nodes: nodes(3, 3),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 6, 3)}}}, demand: []int{1}, want: [][]int{{0}}},
		{name: "3 pods of 2 fit nodes of 4 and 4", nodes: nodes(4, 4),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 6, 3)}}}, demand: []int{1}, want: [][]int{{1}}, used: 6},
		{name: "many equal nodes: 2 groups of 4 pods of 2 on 8 nodes of 2", nodes: nodes(2, 2, 2, 2, 2, 2, 2, 2),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 8, 4)}}}, demand: []int{3}, want: [][]int{{2}}, used: 16},
		{name: "the dearer variant leaves room for the other role", nodes: twoVendors, roles: shared,
			demand: []int{2, 1}, want: [][]int{{0, 2}, {1}}, used: 16},
		{name: "running groups kept on the cheap variant", nodes: twoVendors, roles: shared,
			demand: []int{2, 1}, floor: [][]int{{2, 0}, {0}}, want: [][]int{{2, 0}, {0}}, used: 8},
		{name: "a floor that does not fit", nodes: twoVendors, roles: shared,
			demand: []int{3, 1}, floor: [][]int{{3, 0}, {0}}},
		{name: "a floor beyond the demand", nodes: twoVendors, roles: shared,
			demand: []int{1, 1}, floor: [][]int{{1, 1}, {0}}},
		{name: "no demand", nodes: nodes(8), roles: shared[1:], demand: []int{0}, want: [][]int{{0}}},
		{name: "a negative demand counts as none", nodes: nodes(8), roles: shared[1:], demand: []int{-4}, want: [][]int{{0}}},
		{name: "a negative node holds nothing", nodes: nodes(-8, 8), roles: shared[1:], demand: []int{2}, want: [][]int{{1}}, used: 8},
		{name: "no nodes", roles: shared[1:], demand: []int{1}, want: [][]int{{0}}},
		{name: "groups that need no accelerators all count", nodes: nodes(1),
			roles: []packRole{{Variants: []autoscaler.Variant{{Pods: 2}}}}, demand: []int{3}, want: [][]int{{3}}},
		{name: "pods below 1 are one pod", nodes: nodes(4, 4),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 4, 0)}}}, demand: []int{3}, want: [][]int{{2}}, used: 8},
		{name: "one huge node", nodes: nodes(1024),
			roles: []packRole{{Variants: []autoscaler.Variant{gv(gpu, 1024, 128)}}}, demand: []int{2}, want: [][]int{{1}}, used: 1024},
		{name: "demands and roles disagree", nodes: nodes(8), roles: shared, demand: []int{1}, err: errAny},
		{name: "too many placements to look at", nodes: nodes(1), roles: []packRole{{Variants: []autoscaler.Variant{{}, {}, {}}}},
			demand: []int{100_000}, err: errTooLarge},
		{name: "too many pods to place", nodes: nodes(1), roles: []packRole{{Variants: []autoscaler.Variant{{Pods: 1024}}}},
			demand: []int{5}, err: errTooLarge},
		{name: "a huge demand", nodes: nodes(8), roles: shared, demand: []int{1 << 40, 1 << 40}, err: errTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := bestPacking(tc.nodes, tc.roles, tc.demand, tc.floor)
			switch {
			case tc.err == errAny:
				require.Error(t, err)
				return
			case tc.err != nil:
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			if tc.want == nil {
				require.False(t, ok, "%+v", got)
				return
			}
			require.True(t, ok)
			require.Equal(t, tc.want, got.Counts)
			require.Equal(t, tc.used, got.Used)
		})
	}
}

// errAny stands for any error in the table.
var errAny = errorString("any error")

type errorString string

func (e errorString) Error() string { return string(e) }

// fits places each pod whole on one node.
func TestFits(t *testing.T) {
	role := []packRole{{Variants: []autoscaler.Variant{gv(gpu, 4, 2), gv(gpu, 5, 1)}}}
	for _, tc := range []struct {
		name   string
		nodes  []node
		counts [][]int
		want   bool
	}{
		{name: "nothing fits anywhere", counts: [][]int{{0, 0}}, want: true},
		{name: "two pods of 2 on one node of 4", nodes: []node{{gpu: 4}}, counts: [][]int{{1, 0}}, want: true},
		{name: "a pod of 5 and two of 2 on 5 and 4", nodes: []node{{gpu: 4}, {gpu: 5}}, counts: [][]int{{1, 1}}, want: true},
		{name: "a pod of 5 and four of 2 on 5 and 4", nodes: []node{{gpu: 4}, {gpu: 5}}, counts: [][]int{{2, 1}}},
		{name: "a pod of 5 on nodes of 4", nodes: []node{{gpu: 4}, {gpu: 4}}, counts: [][]int{{0, 1}}},
		{name: "another resource is no room", nodes: []node{{"amd.com/gpu": 8}}, counts: [][]int{{1, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, fits(tc.nodes, role, tc.counts))
		})
	}
}
