package local

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
)

// service reads one ModelService document, defaulted and validated.
func service(t *testing.T, doc string) *v1alpha1.ModelService {
	t.Helper()
	file := filepath.Join(t.TempDir(), "models.yaml")
	require.NoError(t, os.WriteFile(file, []byte(doc), 0o600))
	svcs, err := LoadFile(file)
	require.NoError(t, err)
	require.Len(t, svcs, 1)
	return svcs[0]
}

// flagValue returns the value after flag in argv ("" when absent).
func flagValue(argv []string, flag string) string {
	if i := slices.Index(argv, flag); i >= 0 && i+1 < len(argv) {
		return argv[i+1]
	}
	return ""
}

// A role whose replicas are groups runs one process per rank, each with
// its rank's flags and the leader on loopback at the group's port; a
// variant on which a replica is one process runs the one engine, which
// still gets the parallelism flags.
func TestRoleLaunchOfGroups(t *testing.T) {
	ms := service(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim}
    parallelism: {tensor: 2}
    acceleratorsPerNode: 1
    accelerators:
      - {name: small, resources: {limits: {nvidia.com/gpu: "1"}}, cost: 1}
      - {name: big, resources: {limits: {nvidia.com/gpu: "2"}}, cost: 2, acceleratorsPerNode: 2}
`)
	argv, _, groups, err := roleLaunch(ms, []string{"/bin/kvasir"}, "", nil, env(nil))
	require.NoError(t, err)
	require.Equal(t, []string{"/bin/kvasir", "sim"}, argv[:2])
	require.Equal(t, "2", flagValue(argv, "--tensor-parallel-size"), "the one engine of the big variant has the parallelism")
	require.NotContains(t, argv, "--group-size")
	require.Len(t, groups, 1, "only the small variant runs groups")
	procs := groups["small"]
	require.Len(t, procs, 2)
	for rank, p := range procs {
		require.Equal(t, "2", flagValue(p.Argv, "--group-size"))
		require.Equal(t, strings.Repeat("0", 1-rank)+strings.Repeat("1", rank), flagValue(p.Argv, "--rank"))
		require.Equal(t, "127.0.0.1:"+process.GroupPortVar, flagValue(p.Argv, "--leader-address"))
		require.Equal(t, "$(PORT)", flagValue(p.Argv, "--port"), "each rank has its own port")
	}
	require.Contains(t, procs[0].Argv, "--kv-events-endpoint", "the leader publishes KV events")
	require.NotContains(t, procs[1].Argv, "--kv-events-endpoint", "a worker has no queue-proxy to follow them")

	vs := autoscaler.RoleVariantsOf(&ms.Spec.Template, fleet.RoleUnified)
	require.Equal(t, []autoscaler.Variant{
		{Name: "small", Cost: 1, Need: map[string]int{"nvidia.com/gpu": 2}, Pods: 2},
		{Name: "big", Cost: 2, Need: map[string]int{"nvidia.com/gpu": 2}, Pods: 1},
	}, vs)
}

// A template without parallelism runs as before: no group, no flags.
func TestRoleLaunchWithoutParallelism(t *testing.T) {
	ms := service(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim}
`)
	argv, _, groups, err := roleLaunch(ms, []string{"kvasir"}, "", nil, env(nil))
	require.NoError(t, err)
	require.Nil(t, groups)
	require.NotContains(t, argv, "--tensor-parallel-size")
	plain, _, err := engineCommand(ms, []string{"kvasir"}, "", nil, env(nil), nil)
	require.NoError(t, err)
	require.Equal(t, plain, argv)
}

// A vLLM group in local mode with engine.command: the user's command runs
// inside Ray's head start on the leader (not in place of it), and workers
// start Ray's workers at the leader's group port.
func TestRoleLaunchVLLMRayGroupKeepsTheWrapper(t *testing.T) {
	ms := service(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: m
  template:
    engine: {type: vllm, command: [/venv/bin/vllm, serve]}
    parallelism: {tensor: 2}
    groupSize: 2
`)
	_, _, groups, err := roleLaunch(ms, []string{"kvasir"}, "", nil, env(nil))
	require.NoError(t, err)
	procs := groups[""]
	require.Len(t, procs, 2)
	leader := procs[0].Argv
	require.Equal(t, []string{"/bin/sh", "-c"}, leader[:2], "Ray's head start wraps the command")
	i := slices.Index(leader, "/venv/bin/vllm")
	require.Positive(t, i, "%q", leader)
	require.Equal(t, "serve", leader[i+1])
	require.Contains(t, leader, "ray")
	require.Equal(t, []string{"ray", "start", "--address=127.0.0.1:" + process.GroupPortVar, "--block"}, procs[1].Argv)
}

// A group's devices are taken at once and split between its processes; a
// group that does not fit takes nothing.
func TestDevicesSplitAGroup(t *testing.T) {
	inv, err := autoscaler.ParseInventory("nvidia.com/gpu=5")
	require.NoError(t, err)
	d := &devices{inv: inv, variants: map[fleet.Key][]autoscaler.Variant{}}
	key := fleet.Key{Namespace: "default", Revision: "demo-00001"}
	d.setVariants(key, []autoscaler.Variant{{Need: map[string]int{"nvidia.com/gpu": 4}, Pods: 2}})
	envs, err := d.Allocate(key, "", "g1", 2)
	require.NoError(t, err)
	require.Equal(t, [][]string{{"CUDA_VISIBLE_DEVICES=0,1"}, {"CUDA_VISIBLE_DEVICES=2,3"}}, envs)
	_, err = d.Allocate(key, "", "g2", 2)
	require.ErrorContains(t, err, "1 free of 5")
	require.Equal(t, 1, inv.Free()["nvidia.com/gpu"], "the group that did not fit holds nothing")
	_, err = d.Allocate(key, "", "g3", 3)
	require.Error(t, err)
	d.Release("g1")
	_, err = d.Allocate(key, "", "g4", 3)
	require.ErrorContains(t, err, "do not split evenly over 3 processes")
	require.Equal(t, 5, inv.Free()["nvidia.com/gpu"], "a split that fails gives the devices back")
	_, err = d.Allocate(key, "other", "g5", 2)
	require.ErrorContains(t, err, `no accelerator variant "other"`)
}

func TestGroupsStatus(t *testing.T) {
	require.Nil(t, groupsStatus([]autoscaler.Variant{{Pods: 1}}, 1, 1, nil), "no groups, no block")
	infos := []process.ReplicaInfo{
		{Name: "demo-00001-1", Group: &process.GroupInfo{Pods: 2}},
		{Name: "demo-00001-2", Group: &process.GroupInfo{Pods: 2, NotReady: "leader: waiting for 1 of 1 workers to connect"}},
	}
	require.Equal(t, &GroupsStatus{PodsPerGroup: 2, Desired: 2, Ready: 1,
		NotReady: map[string]string{"demo-00001-2": "leader: waiting for 1 of 1 workers to connect"}},
		groupsStatus([]autoscaler.Variant{{Pods: 2}}, 2, 1, infos))
	require.Equal(t, &GroupsStatus{PodsPerVariant: map[string]int{"a": 4, "b": 1}},
		groupsStatus([]autoscaler.Variant{{Name: "a", Pods: 4}, {Name: "b", Pods: 1}}, 0, 0, nil))
}
