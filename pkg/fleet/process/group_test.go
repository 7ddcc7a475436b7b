package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/queueproxy"
)

// helperEnv makes the test binary run the simulator or a queue-proxy
// instead of the tests, so that groups run real processes.
const helperEnv = "KVASIR_PROCESS_TEST_HELPER"

func TestMain(m *testing.M) {
	main := map[string]func(context.Context, []string, io.Writer) error{"sim": sim.Main, "queue-proxy": queueproxy.Main}[os.Getenv(helperEnv)]
	if main == nil {
		os.Exit(m.Run())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := main(ctx, os.Args[1:], os.Stderr)
	stop()
	if exit, ok := errors.AsType[*sim.ExitError](err); ok {
		os.Exit(exit.Code)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helper is the argv that runs this test binary as kind.
func helper(kind string, args ...string) []string {
	return append([]string{"env", helperEnv + "=" + kind, os.Args[0]}, args...)
}

// simRank is the argv of rank of a simulated group of size.
func simRank(size, rank int) []string {
	return helper("sim", "--port", "$(PORT)", "--model", "m", "--zero-latency", "--tensor-parallel-size", strconv.Itoa(size),
		"--group-size", strconv.Itoa(size), "--rank", strconv.Itoa(rank), "--leader-address", "127.0.0.1:"+GroupPortVar)
}

// fakeDevices hands out n numbered devices, all of a replica's at once or
// none, and remembers every allocation.
type fakeDevices struct {
	mu     sync.Mutex
	owners []string // per device index: the replica holding it
	procs  []int    // the procs of every Allocate
}

func newFakeDevices(n int) *fakeDevices { return &fakeDevices{owners: make([]string, n)} }

func (d *fakeDevices) Allocate(_ fleet.Key, _, replica string, procs int) ([][]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.procs = append(d.procs, procs)
	var free []int
	for i, o := range d.owners {
		if o == "" {
			free = append(free, i)
		}
	}
	if len(free) < procs {
		return nil, fmt.Errorf("%d free devices, %d wanted", len(free), procs)
	}
	env := make([][]string, procs)
	for p := range procs {
		d.owners[free[p]] = replica
		env[p] = []string{"CUDA_VISIBLE_DEVICES=" + strconv.Itoa(free[p])}
	}
	return env, nil
}

func (d *fakeDevices) Release(replica string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, o := range d.owners {
		if o == replica {
			d.owners[i] = ""
		}
	}
}

// holders returns the replica holding each device ("" when free).
func (d *fakeDevices) holders() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.owners)
}

// newGroupRuntime runs a runtime whose queue-proxies are this test binary.
func newGroupRuntime(t *testing.T, dev Devices, startTimeout time.Duration) *Runtime {
	t.Helper()
	cfg := Config{QueueProxy: helper("queue-proxy"), LogDir: t.TempDir(), StartTimeout: startTimeout,
		StopTimeout: 10 * time.Second, Devices: dev}
	rt, err := New(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(rt.Close)
	return rt
}

// alive reports whether a process runs (or is a zombie not yet reaped).
func alive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

// A group is one replica: one endpoint (its leader's queue-proxy), ready
// once the leader is, which is once its worker has joined; each process has
// its share of the replica's devices. SIGKILL of the worker takes the whole
// group down and a new group comes up whole, on the devices the old one
// gave back; a scale to zero ends every process.
func TestGroupIsOneReplicaRecreatedAsAUnit(t *testing.T) {
	dev := newFakeDevices(2)
	rt := newGroupRuntime(t, dev, time.Minute)
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	rt.Add(Spec{Key: key, Engine: []string{"false"}, EngineHealthPath: "/health",
		Groups: map[string][]Process{"": {{Argv: simRank(2, 0)}, {Argv: simRank(2, 1)}}}})
	eps := make(chan []fleet.Endpoint, 64)
	stop := rt.Watch(key, func(e []fleet.Endpoint) { eps <- e })
	defer stop()
	require.NoError(t, rt.Scale(context.Background(), key, 1))

	// ready waits for a ready replica that is not old.
	ready := func(old string) ReplicaInfo {
		t.Helper()
		var info ReplicaInfo
		require.Eventually(t, func() bool {
			reps := rt.Replicas(key)
			if len(reps) != 1 || reps[0].State != stateReady || reps[0].Name == old {
				return false
			}
			info = reps[0]
			return true
		}, 60*time.Second, 5*time.Millisecond, "the group did not become ready")
		return info
	}
	first := ready("")
	require.NotNil(t, first.Group)
	require.Equal(t, 2, first.Group.Pods)
	require.Len(t, first.Group.Workers, 1)
	w := first.Group.Workers[0]
	require.Equal(t, 1, w.Rank)
	require.True(t, w.Running)
	require.Empty(t, first.Group.NotReady)
	require.ElementsMatch(t, []string{"CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"}, append(first.Devices, w.Devices...),
		"each process has its own share")
	require.Equal(t, []string{first.Name, first.Name}, dev.holders())
	require.Eventually(t, func() bool {
		for {
			select {
			case e := <-eps:
				if len(e) == 1 && e[0].Address == first.Address {
					return true
				}
			default:
				return false
			}
		}
	}, 10*time.Second, time.Millisecond, "the leader's queue-proxy is the one endpoint")

	require.NoError(t, syscall.Kill(w.PID, syscall.SIGKILL))
	second := ready(first.Name) // a new group
	for _, pid := range []int{first.EnginePID, first.ProxyPID, w.PID} {
		require.False(t, alive(pid), "process %d of the broken group still runs", pid)
	}
	require.Equal(t, []string{second.Name, second.Name}, dev.holders(), "the new group holds both devices, the old none")
	dev.mu.Lock()
	require.Equal(t, []int{2, 2}, dev.procs, "every allocation is a whole group's")
	dev.mu.Unlock()

	require.NoError(t, rt.Scale(context.Background(), key, 0))
	require.Eventually(t, func() bool { return len(rt.Replicas(key)) == 0 }, 60*time.Second, 5*time.Millisecond)
	for _, pid := range []int{second.EnginePID, second.ProxyPID, second.Group.Workers[0].PID} {
		require.False(t, alive(pid), "process %d still runs after scaling to zero", pid)
	}
	require.Equal(t, []string{"", ""}, dev.holders())
}

// A group whose worker never joins is not ready, is no endpoint, and says
// why in the leader engine's words.
func TestGroupWaitingForAWorkerSaysWhy(t *testing.T) {
	rt := newGroupRuntime(t, nil, time.Minute)
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	rt.Add(Spec{Key: key, Engine: []string{"false"}, EngineHealthPath: "health",
		Groups: map[string][]Process{"": {{Argv: simRank(2, 0)}, {Argv: []string{"sleep", "600"}}}}})
	eps := make(chan []fleet.Endpoint, 64)
	stop := rt.Watch(key, func(e []fleet.Endpoint) { eps <- e })
	defer stop()
	require.NoError(t, rt.Scale(context.Background(), key, 1))
	var info ReplicaInfo
	require.Eventually(t, func() bool {
		reps := rt.Replicas(key)
		if len(reps) != 1 || reps[0].Group == nil {
			return false
		}
		info = reps[0]
		return info.Group.NotReady == "leader: waiting for 1 of 1 workers to connect"
	}, 60*time.Second, 5*time.Millisecond)
	require.Equal(t, stateStarting, info.State)
	require.NoError(t, rt.Scale(context.Background(), key, 0))
	require.Eventually(t, func() bool { return len(rt.Replicas(key)) == 0 }, 60*time.Second, 5*time.Millisecond)
	require.False(t, alive(info.Group.Workers[0].PID))
	for len(eps) > 0 {
		require.Empty(t, <-eps, "a group that never became ready was an endpoint")
	}
}

// A group whose devices cannot all be had starts no process and holds
// nothing; a group that can starts in full.
func TestGroupDevicesAllOrNothing(t *testing.T) {
	dev := newFakeDevices(3)
	rt := newGroupRuntime(t, dev, time.Minute)
	key := fleet.Key{Namespace: "default", Service: "s", Revision: "s-00001"}
	sleeper := Process{Argv: []string{"sleep", "600"}}
	rt.Add(Spec{Key: key, Engine: []string{"false"}, Groups: map[string][]Process{"": {sleeper, sleeper}}})
	require.NoError(t, rt.Scale(context.Background(), key, 2))
	require.Eventually(t, func() bool { return len(rt.Replicas(key)) == 1 }, 10*time.Second, 5*time.Millisecond)
	reps := rt.Replicas(key)
	require.Equal(t, []string{reps[0].Name, reps[0].Name, ""}, dev.holders(),
		"the first group holds two devices, the second none of the one left")
	dev.mu.Lock()
	require.Equal(t, []int{2, 2}, dev.procs)
	dev.mu.Unlock()
	// The group that started did so in full: its worker runs, with the
	// other of the two devices than its leader's.
	g := reps[0].Group
	require.NotNil(t, g)
	require.Len(t, g.Workers, 1)
	require.True(t, g.Workers[0].Running)
	require.Positive(t, g.Workers[0].PID)
	require.NotEmpty(t, g.Workers[0].Devices)
	require.NotEqual(t, reps[0].Devices, g.Workers[0].Devices, "each process its own device")
}

// "$(GROUP_PORT)" expands in argv and environment alike, and only with a
// group port.
func TestExpandGroupPort(t *testing.T) {
	require.Equal(t, []string{"1", "2", "127.0.0.1:3"}, expand([]string{"$(PORT)", "$(KV_EVENTS_PORT)", "127.0.0.1:$(GROUP_PORT)"}, 1, 2, 3))
	require.Equal(t, []string{"$(GROUP_PORT)"}, expand([]string{"$(GROUP_PORT)"}, 1, 2, 0))
	spec := Spec{Engine: []string{"e"}, Env: []string{"A=1"}, Groups: map[string][]Process{"big": {{Argv: []string{"l"}}, {Argv: []string{"w"}}},
		"one": {{Argv: []string{"x"}}}}}
	require.Equal(t, []Process{{Argv: []string{"e"}, Env: []string{"A=1"}}}, spec.processes(""))
	require.Equal(t, []Process{{Argv: []string{"e"}, Env: []string{"A=1"}}}, spec.processes("one"), "one process is no group")
	require.Len(t, spec.processes("big"), 2)
}
