package process

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

func endpoints(names ...string) []fleet.Endpoint {
	eps := make([]fleet.Endpoint, len(names))
	for i, n := range names {
		eps[i] = fleet.Endpoint{Name: n}
	}
	return eps
}

// A watch hands fn the newest set: sets posted while fn runs replace each
// other, so a late set never follows a newer one. stop waits for the call
// under way, and no call starts after it returns.
func TestWatchDeliversTheNewestSetAndNothingAfterStop(t *testing.T) {
	entered := make(chan []fleet.Endpoint, 8)
	release := make(chan struct{})
	w := newWatch(func(eps []fleet.Endpoint) { entered <- eps; <-release })
	ended := make(chan struct{})
	go func() { defer close(ended); w.run(make(chan struct{})) }()

	w.post(endpoints("a"))
	require.Equal(t, endpoints("a"), <-entered) // fn now waits for release
	w.post(endpoints("b"))
	w.post(endpoints("c"))
	release <- struct{}{}
	require.Equal(t, endpoints("c"), <-entered, "b was replaced by c before fn could take it")

	stopped := make(chan struct{})
	go func() { defer close(stopped); w.stop() }()
	select {
	case <-stopped:
		t.Fatal("stop returned while fn was running")
	default:
	}
	release <- struct{}{}
	<-stopped
	w.post(endpoints("d"))
	<-ended
	require.Empty(t, entered, "fn was called after stop returned")
}

// Once the runtime has closed, a watch delivers the last posted set and its
// goroutine ends.
func TestWatchDeliversTheLastSetWhenTheRuntimeCloses(t *testing.T) {
	var got [][]fleet.Endpoint
	w := newWatch(func(eps []fleet.Endpoint) { got = append(got, eps) })
	closed := make(chan struct{})
	w.post(endpoints("a"))
	w.post(endpoints("b"))
	close(closed)
	w.run(closed)
	require.Equal(t, [][]fleet.Endpoint{endpoints("b")}, got)
}

// A watcher's callback runs outside the runtime's lock: it may take a lock
// that the caller of Scale holds, and call the runtime, without deadlock.
func TestWatchCallbackMayTakeALockTheCallerOfScaleHolds(t *testing.T) {
	never := []string{"sh", "-c", "exec sleep 600", "never-ready"} // ignores the flags appended to it
	rt, err := New(Config{QueueProxy: never, LogDir: t.TempDir(), StopTimeout: 5 * time.Second},
		slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer rt.Close()
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	rt.Add(Spec{Key: key, Engine: []string{"sleep", "600"}})

	var mu sync.Mutex // a lock of the runtime's caller
	desired := make(chan int, 16)
	stop := rt.Watch(key, func([]fleet.Endpoint) {
		mu.Lock()
		defer mu.Unlock()
		desired <- rt.Desired(key) // the runtime's lock is free too
	})
	defer stop()
	require.Equal(t, 0, <-desired)
	require.NoError(t, rt.Scale(context.Background(), key, 1))

	scaled := make(chan error, 1)
	go func() {
		mu.Lock()
		defer mu.Unlock()
		scaled <- rt.Scale(context.Background(), key, 0) // stops the replica: a change for the watcher
	}()
	select {
	case err := <-scaled:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Scale waited for a watcher's callback that needs the caller's lock")
	}
	require.Equal(t, 0, <-desired, "the watcher saw the change once the caller let go of its lock")
}

// A watch of a set the runtime does not know gets no endpoints; after Close,
// Watch calls fn before it returns.
func TestWatchOfAnUnknownSetAndAfterClose(t *testing.T) {
	rt, err := New(Config{QueueProxy: []string{"true"}, LogDir: t.TempDir()}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	got := make(chan []fleet.Endpoint, 1)
	stop := rt.Watch(key, func(eps []fleet.Endpoint) { got <- eps })
	require.Empty(t, <-got)
	stop()

	rt.Close()
	rt.Add(Spec{Key: key, Engine: []string{"true"}})
	called := false
	rt.Watch(key, func(eps []fleet.Endpoint) { called = true; require.Empty(t, eps) })()
	require.True(t, called)
}
