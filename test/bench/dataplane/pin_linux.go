package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// cpuSplit is the CPUs of `hops --pin`: the hops under test (nginx, the
// floors, the queue-proxy, the activator) on the last CPU the process may
// use, the load generator (this process) and the engine on the others, so
// that the proxies compared take turns on one core and the requests they
// are measured with are not made on it.
type cpuSplit struct {
	hops, rest unix.CPUSet
}

// splitCPUs divides the CPUs this process may use; it fails on a machine
// with fewer than two.
func splitCPUs() (*cpuSplit, error) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return nil, fmt.Errorf("--pin: %w", err)
	}
	if all.Count() < 2 {
		return nil, fmt.Errorf("--pin: needs two CPUs, this process may use %d", all.Count())
	}
	s := &cpuSplit{rest: all}
	for cpu := 1023; cpu >= 0; cpu-- {
		if all.IsSet(cpu) {
			s.hops.Set(cpu)
			s.rest.Clear(cpu)
			break
		}
	}
	return s, nil
}

// pinSelf moves every thread of this process to the rest of the CPUs
// (threads made later inherit the mask of the thread that makes them) and
// fits GOMAXPROCS to them.
func (s *cpuSplit) pinSelf() error {
	// A thread created while the list is read inherits from an unpinned
	// one: read it again until a pass pins nothing new.
	pinned := make(map[int]bool)
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("--pin: %w", err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || pinned[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &s.rest); err != nil && !os.IsNotExist(err) && err != unix.ESRCH {
				return fmt.Errorf("--pin: thread %d: %w", tid, err)
			}
			pinned[tid] = true
			fresh++
		}
		if fresh == 0 {
			break
		}
	}
	runtime.GOMAXPROCS(s.rest.Count())
	return nil
}

// startOn starts cmd with its CPUs set to set: from a thread whose mask is
// set for the start (a child inherits its parent thread's), given its own
// mask back after. The thread must live on: the children are started to die
// with their parent (process.DieWithParent), which for Linux is the thread
// that started them.
func startOn(set unix.CPUSet, cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var own unix.CPUSet
	if err := unix.SchedGetaffinity(0, &own); err != nil {
		return fmt.Errorf("pin %s: %w", filepath.Base(cmd.Path), err)
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin %s: %w", filepath.Base(cmd.Path), err)
	}
	err := cmd.Start()
	if rerr := unix.SchedSetaffinity(0, &own); rerr != nil {
		// Ending the thread would kill the child (its parent); it goes
		// back on the wrong CPUs instead, and the caller gives up.
		return errors.Join(err, fmt.Errorf("pin %s: restore the starting thread's CPUs: %w", filepath.Base(cmd.Path), rerr))
	}
	return err
}
