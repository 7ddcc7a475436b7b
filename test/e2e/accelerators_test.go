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

// sustain keeps n requests in flight (each asking for maxTokens) until the
// returned stop is called; stop waits for the last answers and fails the
// test on any error. The load lasts as long as the test looks at it, however
// fast the machine answers.
func sustain(t *testing.T, p *platform, n int, maxTokens int64) (stop func()) {
	t.Helper()
	client := sdk(p)
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-done:
					return
				default:
				}
				if _, err := client.Chat.Completions.New(context.Background(),
					chatParams("request "+strconv.Itoa(i)+"."+strconv.Itoa(k), maxTokens)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	return func() {
		close(done)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
	}
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
	stop := sustain(t, p, 16, 64)
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
	stop()
	desired, _ := p.metric("kvasir_revision_desired_replicas", demoLabels)
	require.LessOrEqual(t, desired, 2.0)
}

// Two accelerator variants: the cheaper (ascend, 2 NPUs here) fills first
// and the burst spills to the dearer (h100, 1 GPU); what neither holds is
// reported. Metrics carry the variant; every request is served.
func TestAcceleratorVariantsFillCheapestFirst(t *testing.T) {
	p := startLocal(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--time-scale=10]}
    accelerators:
      - {name: h100, resources: {limits: {nvidia.com/gpu: "1"}}, cost: 3}
      - {name: ascend, resources: {limits: {huawei.com/ascend-910b: "1"}}, cost: 2}
    scaling: {minScale: 0, maxScale: 5, initialScale: 1, target: {concurrency: 2}, stableWindow: 4s, scaleToZeroGracePeriod: 30s}
`, "--accelerators", "nvidia.com/gpu=1,huawei.com/ascend-910b=2")
	variant := func(v string) map[string]string {
		return map[string]string{"namespace": "default", "service": "demo", "role": "unified", "variant": v}
	}
	// The grace period outlasts a slow start on a loaded machine: with 2s, the
	// idle initial replica was once scaled to zero before it was ready.
	require.Eventually(t, func() bool {
		n, ok := p.metric("kvasir_revision_ready_replicas", variant("ascend"))
		return ok && n == 1
	}, 60*time.Second, 20*time.Millisecond, "the initial replica runs on the cheapest variant")
	h, ok := p.metric("kvasir_revision_desired_replicas", variant("h100"))
	require.True(t, ok, "every variant has its series")
	require.Zero(t, h)

	stop := sustain(t, p, 24, 96)
	require.Eventually(t, func() bool {
		n, ok := p.metric("kvasir_revision_unplaceable_replicas", demoLabels)
		return ok && n > 0
	}, 60*time.Second, 20*time.Millisecond, "the burst wants more than three accelerators hold")
	require.Eventually(t, func() bool {
		a, _ := p.metric("kvasir_revision_desired_replicas", variant("ascend"))
		h, _ := p.metric("kvasir_revision_desired_replicas", variant("h100"))
		return a == 2 && h == 1
	}, 60*time.Second, 20*time.Millisecond, "both NPUs first, then the GPU")
	env := map[string]string{}
	require.Eventually(t, func() bool {
		st := p.replicas()
		if len(st.Replicas) != 3 {
			return false
		}
		clear(env)
		for _, r := range st.Replicas {
			env[r.Name] = r.Variant + ":" + engineEnv(t, r.EnginePID, "CUDA_VISIBLE_DEVICES") + ":" + engineEnv(t, r.EnginePID, "ASCEND_RT_VISIBLE_DEVICES")
		}
		return true
	}, 60*time.Second, 20*time.Millisecond)
	got := map[string]bool{}
	for _, v := range env {
		got[v] = true
	}
	require.Equal(t, map[string]bool{"ascend::0": true, "ascend::1": true, "h100:0:": true}, got, "each replica has its variant's device")
	stop()
}
