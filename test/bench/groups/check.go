package main

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// wholeGroup is what every serving group of a revision must hold at every
// moment it holds anything: Pods processes, each with PerProcess devices
// of its own named in DevicesVar, all below Inventory.
type wholeGroup struct {
	Pods, PerProcess, Inventory int
	DevicesVar                  string // CUDA_VISIBLE_DEVICES for nvidia.com/gpu
}

// sampleCheck is one sample of /kvasir/replicas checked: the groups that
// hold devices, the devices held, and what breaks the rule.
type sampleCheck struct {
	Holding, Held int
	Violations    []string
}

// check looks at every replica of every revision in one sample: a group
// holding devices must have all its processes, each process its share, no
// device held twice or beyond the inventory, and no process that exited
// unless the group is stopping (a group's devices go back only once all
// its processes are gone).
func (w wholeGroup) check(st []local.RevisionStatus) sampleCheck {
	var out sampleCheck
	owner := map[int]string{}
	bad := func(format string, args ...any) {
		out.Violations = append(out.Violations, fmt.Sprintf(format, args...))
	}
	for _, rev := range st {
		for _, rp := range rev.Replicas {
			procs := [][]string{rp.Devices}
			running := []bool{true}
			if rp.Group == nil {
				if w.Pods > 1 {
					bad("%s: a replica of one process where groups have %d", rp.Name, w.Pods)
				}
			} else {
				if rp.Group.Pods != w.Pods || len(rp.Group.Workers) != w.Pods-1 {
					bad("%s: a group of %d processes (%d workers listed), want %d", rp.Name, rp.Group.Pods, len(rp.Group.Workers), w.Pods)
				}
				for _, wk := range rp.Group.Workers {
					procs = append(procs, wk.Devices)
					running = append(running, wk.Running)
				}
			}
			held := 0
			for i, env := range procs {
				idx, err := w.devices(env)
				if err != nil {
					bad("%s rank %d: %v", rp.Name, i, err)
					continue
				}
				if len(idx) != w.PerProcess {
					bad("%s rank %d holds %d device(s), want %d: %v", rp.Name, i, len(idx), w.PerProcess, env)
				}
				for _, d := range idx {
					if prev, dup := owner[d]; dup {
						bad("device %d held by %s and %s", d, prev, rp.Name)
					}
					owner[d] = rp.Name
				}
				held += len(idx)
				if !running[i] && rp.State != "Stopping" && len(idx) > 0 {
					bad("%s rank %d has exited while the group (%s) holds its devices", rp.Name, i, rp.State)
				}
			}
			if held > 0 {
				out.Holding++
				out.Held += held
			}
		}
	}
	if out.Held > w.Inventory {
		bad("%d devices held of %d", out.Held, w.Inventory)
	}
	return out
}

// devices reads the indices a process's device environment names: the
// value of DevicesVar, comma-separated canonical indices below the
// inventory, none twice. An environment without the variable names none.
func (w wholeGroup) devices(env []string) ([]int, error) {
	var out []int
	found := false
	for _, kv := range env {
		name, list, ok := strings.Cut(kv, "=")
		if !ok || name != w.DevicesVar {
			continue
		}
		if found {
			return nil, fmt.Errorf("%s given twice", w.DevicesVar)
		}
		found = true
		if list == "" {
			continue
		}
		for _, s := range strings.Split(list, ",") {
			d, err := strconv.Atoi(s)
			if err != nil || d < 0 || strconv.Itoa(d) != s {
				return nil, fmt.Errorf("%s=%q: not a device index", w.DevicesVar, list)
			}
			if d >= w.Inventory {
				return nil, fmt.Errorf("%s=%q: device %d beyond the inventory of %d", w.DevicesVar, list, d, w.Inventory)
			}
			if slices.Contains(out, d) {
				return nil, fmt.Errorf("%s=%q: device %d twice", w.DevicesVar, list, d)
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// procEnv reads one variable of a running process's environment from
// /proc; ok is false when the process is gone or the variable unset.
func procEnv(pid int, name string) (string, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return "", false
	}
	var val string
	found := false
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			val, found = v, true // the last one wins, as in getenv
		}
	}
	return val, found
}

// procCheck compares, once per process, the devices the runtime reports
// for it with those in its environment (/proc/PID/environ).
type procCheck struct {
	seen    map[int]bool
	Checked int
}

func (c *procCheck) check(st []local.RevisionStatus, w wholeGroup) []string {
	if c.seen == nil {
		c.seen = map[int]bool{}
	}
	var bad []string
	look := func(replica string, pid int, env []string) {
		if pid <= 0 || c.seen[pid] {
			return
		}
		c.seen[pid] = true
		got, ok := procEnv(pid, w.DevicesVar)
		if !ok {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
				return // gone already
			}
		}
		want := ""
		for _, kv := range env {
			if v, found := strings.CutPrefix(kv, w.DevicesVar+"="); found {
				want = v
			}
		}
		c.Checked++
		if got != want {
			bad = append(bad, fmt.Sprintf("%s pid %d: %s=%q in its environment, the runtime reports %q", replica, pid, w.DevicesVar, got, want))
		}
	}
	for _, rev := range st {
		for _, rp := range rev.Replicas {
			if rp.State == "Stopping" {
				continue
			}
			look(rp.Name, rp.EnginePID, rp.Devices)
			if rp.Group != nil {
				for _, wk := range rp.Group.Workers {
					if wk.Running {
						look(rp.Name, wk.PID, wk.Devices)
					}
				}
			}
		}
	}
	return bad
}
