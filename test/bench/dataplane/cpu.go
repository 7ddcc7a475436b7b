package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, what
// `getconf CLK_TCK` prints (100 on Linux for every common architecture).
func userHZ() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	hz, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || hz <= 0 {
		return 100
	}
	return hz
}

// procStat is what the CPU measure needs of one /proc/PID/stat line.
type procStat struct {
	ppid  int
	ticks int64 // utime + stime, in USER_HZ ticks
}

// parseProcStat reads ppid (field 4) and utime + stime (fields 14 and 15)
// from the text of /proc/PID/stat. The command name (field 2) is in
// parentheses and may itself hold spaces and parentheses, so the fields
// are counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("no ')' after the command name")
	}
	// fields[0] is field 3 (state).
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 13 {
		return procStat{}, fmt.Errorf("%d fields after the command name, want at least 13", len(fields))
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, fmt.Errorf("ppid: %w", err)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil || v < 0 {
			return procStat{}, fmt.Errorf("utime/stime %q: not a count of ticks", f)
		}
		ticks += v
	}
	return procStat{ppid: ppid, ticks: ticks}, nil
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// cpuMeter reads the CPU time (utime + stime, every thread) that a set of
// separately started processes have used, each with its direct children
// (nginx's workers under its master). Children that exited are not counted.
type cpuMeter struct {
	hz int64
}

// treeCPU is the CPU time of pid and its direct children.
func (m cpuMeter) treeCPU(pid int) (time.Duration, error) {
	root, err := readProcStat(pid)
	if err != nil {
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	ticks := root.ticks
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		st, err := readProcStat(child)
		if err != nil || st.ppid != pid {
			continue // gone meanwhile, or not a child
		}
		ticks += st.ticks
	}
	return time.Duration(ticks) * time.Second / time.Duration(m.hz), nil
}

// snapshot is the CPU time of each of pids (with their children); 0 for
// a pid of 0 (no process).
func (m cpuMeter) snapshot(pids []int) ([]time.Duration, error) {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		if pid == 0 {
			continue
		}
		d, err := m.treeCPU(pid)
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}
