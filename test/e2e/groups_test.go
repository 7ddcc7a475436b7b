package e2e

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// groupDemo is a simulated model whose replica is a serving group of two
// processes (tensor 2 on nodes of one GPU, one GPU each) that starts at
// zero, on a machine of two GPUs: one group at a time.
const groupDemo = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine:
      type: sim
      args: ["--time-scale=20", "--startup-delay=1s"]
    parallelism: {tensor: 2}
    acceleratorsPerNode: 1
    resources: {limits: {nvidia.com/gpu: "1"}}
    scaling: {minScale: 0, maxScale: 1, initialScale: 0, target: {concurrency: 128}, scaleToZeroGracePeriod: 60s, stableWindow: 4s}
`

// cmdline reads a process's argv.
func cmdline(t *testing.T, pid int) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	require.NoError(t, err)
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

// readyGroup waits for the one replica of the revision to be a ready group
// of two processes that is not named old, and returns its status.
func readyGroup(t *testing.T, p *platform, old string) local.ReplicaStatus {
	t.Helper()
	var got local.ReplicaStatus
	require.Eventually(t, func() bool {
		st := p.replicas()
		if len(st.Replicas) != 1 {
			return false
		}
		r := st.Replicas[0]
		if r.Name == old || r.State != "Ready" || r.Group == nil || len(r.Group.Workers) != 1 {
			return false
		}
		got = r
		return true
	}, 60*time.Second, 10*time.Millisecond, "no ready group of two processes")
	return got
}

// A request brings a two-process serving group up from zero and is
// answered through the OpenAI SDK; each process holds one of the two GPUs.
// SIGKILL of the worker takes the whole group down, and a new group comes
// up whole, on the GPUs the broken one gave back, and serves again.
func TestGroupFromZeroAndRecoveredAsAUnit(t *testing.T) {
	p := startLocal(t, groupDemo, "--accelerators", "nvidia.com/gpu=2")
	st := p.replicas()
	require.Equal(t, &local.GroupsStatus{PodsPerGroup: 2, Desired: 0, Ready: 0}, st.Groups, "the status shows groups from the start")
	require.Empty(t, st.Replicas)

	client := sdk(p)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	resp, err := client.Chat.Completions.New(ctx, chatParams("hello group", 8))
	require.NoError(t, err, "the request that woke the group")
	require.NotEmpty(t, resp.Choices)
	require.NotEmpty(t, resp.Choices[0].Message.Content)

	first := readyGroup(t, p, "")
	worker := first.Group.Workers[0]
	require.Equal(t, 2, first.Group.Pods)
	require.Equal(t, 1, worker.Rank)
	require.True(t, worker.Running)
	// The status's worker is the rank 1 process of this group.
	argv := cmdline(t, worker.PID)
	i := slices.Index(argv, "--rank")
	require.Positive(t, i, "%q", argv)
	require.Equal(t, "1", argv[i+1])
	require.Equal(t, "0", cmdline(t, first.EnginePID)[slices.Index(cmdline(t, first.EnginePID), "--rank")+1])
	devices := []string{engineEnv(t, first.EnginePID, "CUDA_VISIBLE_DEVICES"), engineEnv(t, worker.PID, "CUDA_VISIBLE_DEVICES")}
	require.ElementsMatch(t, []string{"0", "1"}, devices, "each process of the group has its own GPU")
	require.Equal(t, []string{"CUDA_VISIBLE_DEVICES=" + devices[0]}, first.Devices)
	require.Equal(t, []string{"CUDA_VISIBLE_DEVICES=" + devices[1]}, worker.Devices)
	st = p.replicas()
	require.Equal(t, 1, st.Groups.Ready)
	require.Empty(t, st.Groups.NotReady)

	killed := time.Now()
	require.NoError(t, syscall.Kill(worker.PID, syscall.SIGKILL))
	second := readyGroup(t, p, first.Name)
	t.Logf("from SIGKILL of the worker to a ready group: %v", time.Since(killed))
	for _, pid := range []int{first.EnginePID, first.ProxyPID, worker.PID} {
		requireGone(t, pid, "a process of the broken group still runs")
	}
	// Both GPUs are the new group's: the broken group holds none (with two
	// GPUs, the new group could not have started otherwise).
	newWorker := second.Group.Workers[0]
	require.ElementsMatch(t, []string{"0", "1"},
		[]string{engineEnv(t, second.EnginePID, "CUDA_VISIBLE_DEVICES"), engineEnv(t, newWorker.PID, "CUDA_VISIBLE_DEVICES")})
	unplaceable, _ := p.metric("kvasir_revision_unplaceable_replicas", demoLabels)
	require.Zero(t, unplaceable)

	resp, err = client.Chat.Completions.New(ctx, chatParams("hello again", 8))
	require.NoError(t, err, "the recreated group serves")
	require.NotEmpty(t, resp.Choices)

	p.stop()
	for _, pid := range []int{newWorker.PID, second.EnginePID} {
		requireGone(t, pid, "a process of the group outlived kvasir local")
	}
}

// requireGone waits for a process to be gone (exited and reaped).
func requireGone(t *testing.T, pid int, msg string) {
	t.Helper()
	require.Eventually(t, func() bool { return syscall.Kill(pid, 0) != nil }, 30*time.Second, 10*time.Millisecond, "%s: process %d", msg, pid)
}
