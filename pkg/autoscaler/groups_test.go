package autoscaler

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	kptr "k8s.io/utils/ptr"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// gpus is n nvidia.com/gpu of one pod.
func gpus(n string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse(n)}}
}

// A role's variants count a serving group's accelerators whole: one pod's
// resources times the pods of the group on that variant.
func TestRoleVariantsOfGroups(t *testing.T) {
	for _, tc := range []struct {
		name string
		tmpl v1alpha1.RevisionTemplate
		role string
		want []Variant
	}{
		{name: "no parallelism: one pod", tmpl: v1alpha1.RevisionTemplate{Resources: gpus("1")},
			want: []Variant{{Need: map[string]int{"nvidia.com/gpu": 1}, Pods: 1}}},
		{name: "tensor 2 on nodes of 1: two pods of one", tmpl: v1alpha1.RevisionTemplate{Resources: gpus("1"),
			Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](2)}, AcceleratorsPerNode: kptr.To[int32](1)},
			want: []Variant{{Need: map[string]int{"nvidia.com/gpu": 2}, Pods: 2}}},
		{name: "tensor 8 × pipeline 2 on nodes of 8", tmpl: v1alpha1.RevisionTemplate{Resources: gpus("8"),
			Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](8), Pipeline: kptr.To[int32](2)}, AcceleratorsPerNode: kptr.To[int32](8)},
			want: []Variant{{Need: map[string]int{"nvidia.com/gpu": 16}, Pods: 2}}},
		{name: "a group without accelerators needs none", tmpl: v1alpha1.RevisionTemplate{
			Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](2)}, GroupSize: kptr.To[int32](2)},
			want: []Variant{{Pods: 2}}},
		{name: "per variant: big nodes one pod, small nodes four", tmpl: v1alpha1.RevisionTemplate{
			Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](8)}, AcceleratorsPerNode: kptr.To[int32](8),
			Accelerators: []v1alpha1.AcceleratorVariant{
				{Name: "small", Resources: gpus("2"), Cost: 1, AcceleratorsPerNode: kptr.To[int32](2)},
				{Name: "big", Resources: gpus("8"), Cost: 2},
			}},
			want: []Variant{{Name: "small", Cost: 1, Need: map[string]int{"nvidia.com/gpu": 8}, Pods: 4},
				{Name: "big", Cost: 2, Need: map[string]int{"nvidia.com/gpu": 8}, Pods: 1}}},
		{name: "per role: prefill a group, decode one pod", role: fleet.RolePrefill, tmpl: v1alpha1.RevisionTemplate{Resources: gpus("1"),
			AcceleratorsPerNode: kptr.To[int32](1),
			Roles: &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](4)}},
				Decode: &v1alpha1.RoleSpec{}}},
			want: []Variant{{Need: map[string]int{"nvidia.com/gpu": 4}, Pods: 4}}},
		{name: "per role: the decode role of the same", role: fleet.RoleDecode, tmpl: v1alpha1.RevisionTemplate{Resources: gpus("1"),
			AcceleratorsPerNode: kptr.To[int32](1),
			Roles: &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](4)}},
				Decode: &v1alpha1.RoleSpec{}}},
			want: []Variant{{Need: map[string]int{"nvidia.com/gpu": 1}, Pods: 1}}},
		{name: "an invalid shape counts as one pod", tmpl: v1alpha1.RevisionTemplate{Resources: gpus("1"),
			Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To[int32](3)}, GroupSize: kptr.To[int32](2)},
			want: []Variant{{Need: map[string]int{"nvidia.com/gpu": 1}, Pods: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, RoleVariantsOf(&tc.tmpl, tc.role))
		})
	}
}

// Groups are placed whole: on an inventory where 3 whole groups fit, a
// burst asking for 5 places 3 and reports 2 unplaceable, and the devices
// left over are never held by a partial group.
func TestPlaceGroupsWholeOrNotAtAll(t *testing.T) {
	group := func(tensor, perNode int32) []Variant {
		return RoleVariantsOf(&v1alpha1.RevisionTemplate{Resources: gpus("1"),
			Parallelism: &v1alpha1.ParallelismSpec{Tensor: kptr.To(tensor)}, AcceleratorsPerNode: kptr.To(perNode)}, "")
	}
	for _, tc := range []struct {
		name        string
		variants    []Variant
		inventory   string
		current     int
		n           int
		placed      int
		unplaceable int
		idle        int // devices free after the placed groups took theirs
	}{
		{name: "3 whole groups of 2 on 7 GPUs, 5 wanted", variants: group(2, 1), inventory: "nvidia.com/gpu=7", n: 5,
			placed: 3, unplaceable: 2, idle: 1},
		{name: "3 whole groups of 2 on 6 GPUs, 5 wanted", variants: group(2, 1), inventory: "nvidia.com/gpu=6", n: 5,
			placed: 3, unplaceable: 2},
		{name: "groups of 4 on 7 GPUs: one, three idle", variants: group(4, 1), inventory: "nvidia.com/gpu=7", n: 2,
			placed: 1, unplaceable: 1, idle: 3},
		{name: "a group larger than the machine", variants: group(8, 1), inventory: "nvidia.com/gpu=7", n: 1,
			unplaceable: 1, idle: 7},
		{name: "running groups keep theirs; growth is whole", variants: group(2, 1), inventory: "nvidia.com/gpu=7", current: 1, n: 4,
			placed: 3, unplaceable: 1, idle: 1},
		{name: "all fit", variants: group(2, 1), inventory: "nvidia.com/gpu=8", n: 4, placed: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := ParseInventory(tc.inventory)
			require.NoError(t, err)
			vs := tc.variants
			// The groups running now hold their devices already.
			for i := range tc.current {
				_, err := inv.Allocate("running-"+string(rune('a'+i)), vs[0].Need)
				require.NoError(t, err)
			}
			vs[0].Current = tc.current
			p := Place(vs, inv.Free(), tc.n)
			require.Equal(t, tc.placed, p.Total())
			require.Equal(t, tc.unplaceable, p.Unplaceable)
			if tc.unplaceable > 0 {
				require.Equal(t, []string{"nvidia.com/gpu"}, p.Missing)
			}
			// Starting the placed groups takes their devices whole, each
			// split over its pods; one more group finds no room and holds
			// nothing.
			for i := tc.current; i < p.Total(); i++ {
				alloc, err := inv.Allocate("group-"+string(rune('a'+i)), vs[0].Need)
				require.NoError(t, err)
				shares, err := SplitAllocation(alloc, vs[0].Pods)
				require.NoError(t, err)
				require.Len(t, shares, vs[0].Pods)
				for _, sh := range shares {
					require.Len(t, sh["nvidia.com/gpu"], vs[0].Need["nvidia.com/gpu"]/vs[0].Pods)
				}
			}
			free := inv.Free()
			require.Equal(t, tc.idle, free["nvidia.com/gpu"])
			if tc.unplaceable > 0 {
				_, err := inv.Allocate("partial", vs[0].Need)
				require.Error(t, err)
				require.Equal(t, free, inv.Free(), "a group that does not fit holds nothing")
			}
		})
	}
}

func TestSplitAllocation(t *testing.T) {
	shares, err := SplitAllocation(map[string][]int{"nvidia.com/gpu": {0, 1, 4, 5}, "huawei.com/ascend-910b": {2, 3}}, 2)
	require.NoError(t, err)
	require.Equal(t, []map[string][]int{
		{"nvidia.com/gpu": {0, 1}, "huawei.com/ascend-910b": {2}},
		{"nvidia.com/gpu": {4, 5}, "huawei.com/ascend-910b": {3}},
	}, shares)
	require.Equal(t, []string{"ASCEND_RT_VISIBLE_DEVICES=3", "CUDA_VISIBLE_DEVICES=4,5"}, VisibleDevicesEnv(shares[1]))
	one, err := SplitAllocation(map[string][]int{"nvidia.com/gpu": {3}}, 1)
	require.NoError(t, err)
	require.Equal(t, []map[string][]int{{"nvidia.com/gpu": {3}}}, one)
	none, err := SplitAllocation(nil, 3)
	require.NoError(t, err)
	require.Len(t, none, 3)
	_, err = SplitAllocation(map[string][]int{"nvidia.com/gpu": {0, 1, 2}}, 2)
	require.ErrorContains(t, err, "do not split evenly over 2 processes")
	_, err = SplitAllocation(nil, 0)
	require.Error(t, err)
}
