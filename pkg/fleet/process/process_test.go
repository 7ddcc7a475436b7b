package process

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
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

// A replica's processes are started without the runtime's lock: while one
// is being launched (here its log file is a FIFO nobody reads yet, so
// opening it blocks), the runtime answers and can stop the replica, which
// then starts and is stopped as any, leaving nothing behind.
func TestLaunchHoldsNoLock(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "s-00001-1-engine.log"), 0o600))
	rt, err := New(Config{QueueProxy: []string{"sh", "-c", "exec sleep 600", "qp"}, LogDir: dir,
		StartTimeout: time.Minute, StopTimeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer rt.Close()
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	rt.Add(Spec{Key: key, Engine: []string{"sleep", "600"}})
	scaled := make(chan error, 1)
	go func() { scaled <- rt.Scale(context.Background(), key, 1) }()

	// The launch is blocked on the log file, the runtime is not.
	require.Eventually(t, func() bool {
		reps := rt.Replicas(key)
		return len(reps) == 1 && reps[0].State == stateStarting && reps[0].EnginePID == 0
	}, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, rt.Scale(context.Background(), key, 0), "scaling while a replica launches")
	require.Equal(t, stateStopping, rt.Replicas(key)[0].State)

	fifo, err := os.OpenFile(filepath.Join(dir, "s-00001-1-engine.log"), os.O_RDONLY, 0)
	require.NoError(t, err)
	defer fifo.Close()
	go func() { _, _ = io.Copy(io.Discard, fifo) }()
	require.NoError(t, <-scaled)
	require.Eventually(t, func() bool { return len(rt.Replicas(key)) == 0 }, 20*time.Second, 10*time.Millisecond,
		"the replica stopped before its launch is stopped once launched")
}
