package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// engineEnv reads one variable of a process's environment.
func engineEnv(t *testing.T, pid int, name string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	require.NoError(t, err)
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v
		}
	}
	return ""
}

// With an inventory of 2 GPUs and one GPU a replica, a burst that wants 4
// replicas gets 2, each with its own device, and the rest is reported as
// unplaceable; the requests are all served.
func TestAcceleratorInventoryBoundsReplicas(t *testing.T) {
	p := startLocal(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--time-scale=10]}
    resources: {limits: {nvidia.com/gpu: "1"}}
    scaling: {minScale: 0, maxScale: 4, initialScale: 0, target: {concurrency: 4}, stableWindow: 4s, scaleToZeroGracePeriod: 2s}
`, "--accelerators", "nvidia.com/gpu=2")
	client := sdk(p)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			_, err := client.Chat.Completions.New(context.Background(), chatParams("request "+strconv.Itoa(i), 64))
			errs <- err
		})
	}
	require.Eventually(t, func() bool {
		n, ok := p.metric("kvasir_revision_unplaceable_replicas", demoLabels)
		return ok && n > 0
	}, 60*time.Second, 20*time.Millisecond, "the autoscaler wanted more than 2 GPUs hold")
	require.Eventually(t, func() bool { return len(p.replicas().Replicas) == 2 }, 60*time.Second, 20*time.Millisecond)
	devices := map[string]bool{}
	for _, r := range p.replicas().Replicas {
		devices[engineEnv(t, r.EnginePID, "CUDA_VISIBLE_DEVICES")] = true
	}
	require.Equal(t, map[string]bool{"0": true, "1": true}, devices, "each replica has its own GPU")
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	desired, _ := p.metric("kvasir_revision_desired_replicas", demoLabels)
	require.LessOrEqual(t, desired, 2.0)
}
