package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/local"
)

// grp is a replica that is a group of a leader and workers, each process
// with one device environment.
func grp(name, state string, leader []string, workers ...process.WorkerInfo) local.ReplicaStatus {
	return local.ReplicaStatus{ReplicaInfo: process.ReplicaInfo{Name: name, State: state, Devices: leader,
		Group: &process.GroupInfo{Pods: len(workers) + 1, Workers: workers}}}
}

func wk(rank int, running bool, env ...string) process.WorkerInfo {
	return process.WorkerInfo{Rank: rank, PID: 100 + rank, Running: running, Devices: env}
}

func dev(list string) []string { return []string{"CUDA_VISIBLE_DEVICES=" + list} }

func TestWholeGroupCheck(t *testing.T) {
	rule := wholeGroup{Pods: 2, PerProcess: 1, Inventory: 7, DevicesVar: "CUDA_VISIBLE_DEVICES"}
	for _, tc := range []struct {
		name     string
		replicas []local.ReplicaStatus
		holding  int
		bad      []string // substrings of the violations, in order
	}{
		{name: "no replica"},
		{name: "three whole groups", holding: 3, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0"), wk(1, true, dev("1")...)),
			grp("b", "Starting", dev("2"), wk(1, true, dev("3")...)),
			grp("c", "Stopping", dev("4"), wk(1, false, dev("5")...)),
		}},
		{name: "a worker without its share", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Starting", dev("0"), wk(1, true)),
		}, bad: []string{"a rank 1 holds 0 device(s), want 1"}},
		{name: "a group missing its worker", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0")),
		}, bad: []string{"a group of 1 processes (0 workers listed), want 2"}},
		{name: "one process where groups have two", holding: 1, replicas: []local.ReplicaStatus{
			{ReplicaInfo: process.ReplicaInfo{Name: "a", State: "Ready", Devices: dev("0")}},
		}, bad: []string{"a replica of one process where groups have 2"}},
		{name: "a device held by two groups", holding: 2, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0"), wk(1, true, dev("1")...)),
			grp("b", "Ready", dev("1"), wk(1, true, dev("2")...)),
		}, bad: []string{"device 1 held by a and b"}},
		{name: "a worker exited while the group is ready", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0"), wk(1, false, dev("1")...)),
		}, bad: []string{"a rank 1 has exited while the group (Ready) holds its devices"}},
		{name: "a process with two devices", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0,1"), wk(1, true, dev("2")...)),
		}, bad: []string{"a rank 0 holds 2 device(s), want 1"}},
		{name: "more held than the inventory", holding: 4, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0"), wk(1, true, dev("1")...)),
			grp("b", "Ready", dev("2"), wk(1, true, dev("3")...)),
			grp("c", "Ready", dev("4"), wk(1, true, dev("5")...)),
			grp("d", "Ready", dev("6"), wk(1, true, dev("6")...)),
		}, bad: []string{"device 6 held by d and d", "8 devices held of 7"}},
		{name: "forged: a device beyond the inventory", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0"), wk(1, true, dev("7")...)),
		}, bad: []string{"device 7 beyond the inventory of 7"}},
		{name: "malformed: not a number", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("x"), wk(1, true, dev("1")...)),
		}, bad: []string{"not a device index"}},
		{name: "malformed: a non-canonical index", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("01"), wk(1, true, dev("1")...)),
		}, bad: []string{"not a device index"}},
		{name: "malformed: a negative index", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("-1"), wk(1, true, dev("1")...)),
		}, bad: []string{"not a device index"}},
		{name: "duplicated: one device twice in a list", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev("0,0"), wk(1, true, dev("1")...)),
		}, bad: []string{"device 0 twice"}},
		{name: "duplicated: the variable twice", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", append(dev("0"), dev("2")...), wk(1, true, dev("1")...)),
		}, bad: []string{"CUDA_VISIBLE_DEVICES given twice"}},
		{name: "huge: a list of 100000 devices", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", dev(strings.Repeat("3,", 100_000)+"3"), wk(1, true, dev("1")...)),
		}, bad: []string{"device 3 twice"}},
		{name: "other variables are not devices", holding: 1, replicas: []local.ReplicaStatus{
			grp("a", "Ready", []string{"ROCR_VISIBLE_DEVICES=5", "CUDA_VISIBLE_DEVICES=0", "junk"}, wk(1, true, dev("1")...)),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rule.check([]local.RevisionStatus{{Service: "s", Role: "unified", Replicas: tc.replicas}})
			require.Equal(t, tc.holding, got.Holding)
			require.Len(t, got.Violations, len(tc.bad), "%q", got.Violations)
			for i, b := range tc.bad {
				require.Contains(t, got.Violations[i], b)
			}
		})
	}
}

func TestRehome(t *testing.T) {
	p := enginePorts{engine: 1111, kvEvents: 2222, group: 3333}
	for _, tc := range []struct {
		name            string
		argv, env       []string
		wantArgv, wantE []string
	}{
		{name: "a leader",
			argv:     []string{"kvasir", "sim", "--port", "40000", "--kv-events-endpoint", "tcp://127.0.0.1:40001", "--group-size", "2", "--rank", "0", "--leader-address", "127.0.0.1:40002"},
			env:      []string{"PORT=40000", "KV_EVENTS_PORT=40001", "GROUP_PORT=40002", "CUDA_VISIBLE_DEVICES=0", "HOME=/root"},
			wantArgv: []string{"kvasir", "sim", "--port", "1111", "--kv-events-endpoint", "tcp://127.0.0.1:2222", "--group-size", "2", "--rank", "0", "--leader-address", "127.0.0.1:3333"},
			wantE:    []string{"PORT=1111", "KV_EVENTS_PORT=2222", "GROUP_PORT=3333", "CUDA_VISIBLE_DEVICES=0", "HOME=/root"}},
		{name: "a flag without its value at the end stays",
			argv: []string{"sim", "--port"}, wantArgv: []string{"sim", "--port"}, wantE: []string{}},
		{name: "an address without a port and an ipc endpoint stay",
			argv:     []string{"sim", "--leader-address", "leader", "--kv-events-endpoint", "ipc:///tmp/x"},
			wantArgv: []string{"sim", "--leader-address", "leader", "--kv-events-endpoint", "ipc:///tmp/x"}, wantE: []string{}},
		{name: "the program name is never a flag",
			argv: []string{"--port", "5"}, wantArgv: []string{"--port", "5"}, wantE: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv, env := rehome(tc.argv, tc.env, p)
			require.Equal(t, tc.wantArgv, argv)
			require.Equal(t, tc.wantE, env)
		})
	}
}

// clipFloor keeps at most the demand of what ran, dropping from the
// dearest variant first.
func TestClipFloor(t *testing.T) {
	roles := []packRole{{Name: "a"}, {Name: "b"}}
	require.Equal(t, [][]int{{2, 1}, {0}}, clipFloor(roles, [][]int{{2, 3}, {4}}, []int{3, 0}))
	require.Equal(t, [][]int{{1, 0}, {1}}, clipFloor(roles, [][]int{{2, 1}, {1}}, []int{1, 5}))
	require.Equal(t, [][]int{{0, 0}, {0}}, clipFloor(roles, [][]int{{2, 1}, {1}}, []int{-1, 0}))
}
