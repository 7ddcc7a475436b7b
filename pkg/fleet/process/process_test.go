package process

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// A replica whose queue-proxy never answers readiness is replaced after
// StartTimeout, and scaling to zero ends its processes.
func TestReplicaThatNeverBecomesReadyIsReplaced(t *testing.T) {
	never := []string{"sh", "-c", "exec sleep 600", "never-ready"} // ignores the flags appended to it
	rt, err := New(Config{QueueProxy: never, LogDir: t.TempDir(), StartTimeout: 200 * time.Millisecond,
		StopTimeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer rt.Close()
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	rt.Add(Spec{Key: key, Engine: []string{"sleep", "600"}})
	ready := make(chan int, 16)
	stop := rt.Watch(key, func(eps []fleet.Endpoint) { ready <- len(eps) })
	defer stop()
	require.Equal(t, 0, <-ready)
	require.NoError(t, rt.Scale(context.Background(), key, 1))

	require.Eventually(t, func() bool { return len(rt.Replicas(key)) == 1 }, 10*time.Second, 10*time.Millisecond)
	first := rt.Replicas(key)[0]
	require.Eventually(t, func() bool {
		reps := rt.Replicas(key)
		return len(reps) == 1 && reps[0].Name != first.Name && reps[0].EnginePID > 0
	}, 20*time.Second, 10*time.Millisecond, "the never-ready replica was not replaced")
	for _, pid := range []int{first.EnginePID, first.ProxyPID} {
		require.Error(t, syscall.Kill(pid, 0), "process %d of the replaced replica still runs", pid)
	}

	second := rt.Replicas(key)[0]
	require.NoError(t, rt.Scale(context.Background(), key, 0))
	require.Eventually(t, func() bool { return len(rt.Replicas(key)) == 0 }, 20*time.Second, 10*time.Millisecond)
	for _, pid := range []int{second.EnginePID, second.ProxyPID} {
		require.Error(t, syscall.Kill(pid, 0), "process %d still runs after scaling to zero", pid)
	}
	for len(ready) > 0 {
		require.Zero(t, <-ready, "a never-ready replica was published as an endpoint")
	}
}
