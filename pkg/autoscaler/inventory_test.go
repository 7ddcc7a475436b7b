package autoscaler

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestInventory(t *testing.T) {
	inv, err := ParseInventory("nvidia.com/gpu=4, huawei.com/ascend-910b=8")
	require.NoError(t, err)
	require.Equal(t, []string{"huawei.com/ascend-910b", "nvidia.com/gpu"}, inv.Resources())
	two := map[string]int{"nvidia.com/gpu": 2}
	require.Equal(t, map[string]int{"nvidia.com/gpu": 4, "huawei.com/ascend-910b": 8}, inv.Free())
	a, err := inv.Allocate("r1", two)
	require.NoError(t, err)
	require.Equal(t, []string{"CUDA_VISIBLE_DEVICES=0,1"}, VisibleDevicesEnv(a))
	b, err := inv.Allocate("r2", two)
	require.NoError(t, err)
	require.Equal(t, []string{"CUDA_VISIBLE_DEVICES=2,3"}, VisibleDevicesEnv(b))
	require.Equal(t, 0, inv.Free()["nvidia.com/gpu"])
	_, err = inv.Allocate("r3", two)
	require.ErrorContains(t, err, "nvidia.com/gpu: 0 free of 4, the replica needs 2")
	inv.Release("r1")
	require.Equal(t, 2, inv.Free()["nvidia.com/gpu"])
	c, err := inv.Allocate("r3", map[string]int{"nvidia.com/gpu": 1, "huawei.com/ascend-910b": 3})
	require.NoError(t, err)
	require.Equal(t, []string{"ASCEND_RT_VISIBLE_DEVICES=0,1,2", "CUDA_VISIBLE_DEVICES=0"}, VisibleDevicesEnv(c))
	require.Equal(t, map[string]int{"nvidia.com/gpu": 1, "huawei.com/ascend-910b": 5}, inv.Free())

	for _, bad := range []string{"gpu=2", "nvidia.com/gpu", "nvidia.com/gpu=-1", "nvidia.com/gpu=1,nvidia.com/gpu=2"} {
		_, err := ParseInventory(bad)
		require.Error(t, err, bad)
	}
}
