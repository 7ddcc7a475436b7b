package main

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestSplitCPUsAndStartOn(t *testing.T) {
	var all unix.CPUSet
	require.NoError(t, unix.SchedGetaffinity(0, &all))
	s, err := splitCPUs()
	if all.Count() < 2 {
		require.Error(t, err)
		return
	}
	require.NoError(t, err)
	require.Equal(t, 1, s.hops.Count())
	require.Equal(t, all.Count()-1, s.rest.Count())
	for cpu := range 1024 {
		require.False(t, s.hops.IsSet(cpu) && s.rest.IsSet(cpu), "CPU %d in both", cpu)
		require.Equal(t, all.IsSet(cpu), s.hops.IsSet(cpu) || s.rest.IsSet(cpu), "CPU %d", cpu)
	}

	for _, set := range []unix.CPUSet{s.hops, s.rest} {
		cmd := exec.Command("sleep", "60")
		require.NoError(t, startOn(set, cmd))
		var got unix.CPUSet
		err := unix.SchedGetaffinity(cmd.Process.Pid, &got)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		require.NoError(t, err)
		require.Equal(t, set, got, "the child runs on the set it was started on")
	}
	// The parent's own threads are untouched by startOn.
	var now unix.CPUSet
	require.NoError(t, unix.SchedGetaffinity(0, &now))
	require.Equal(t, all.Count(), now.Count())
}
