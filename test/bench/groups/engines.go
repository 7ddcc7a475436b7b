package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// procArgv reads a process's argv and environment from /proc.
func procArgv(pid int) (argv, env []string, err error) {
	read := func(name string) ([]string, error) {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + name)
		if err != nil {
			return nil, err
		}
		return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00"), nil
	}
	if argv, err = read("cmdline"); err != nil {
		return nil, nil, err
	}
	if len(argv) == 0 || argv[0] == "" {
		return nil, nil, fmt.Errorf("pid %d: empty command line", pid)
	}
	env, err = read("environ")
	return argv, env, err
}

// enginePorts are the ports a copy of a group runs on.
type enginePorts struct{ engine, kvEvents, group int }

// rehome points a copied engine command at new ports: --port, the
// --leader-address's port, a tcp:// --kv-events-endpoint's port, and the
// PORT, KV_EVENTS_PORT and GROUP_PORT variables.
func rehome(argv, env []string, p enginePorts) ([]string, []string) {
	argv = append([]string(nil), argv...)
	for i := 1; i+1 < len(argv); i++ {
		switch argv[i] {
		case "--port":
			argv[i+1] = strconv.Itoa(p.engine)
		case "--leader-address":
			if host, _, ok := strings.Cut(argv[i+1], ":"); ok {
				argv[i+1] = host + ":" + strconv.Itoa(p.group)
			}
		case "--kv-events-endpoint":
			if j := strings.LastIndex(argv[i+1], ":"); j > 0 && strings.HasPrefix(argv[i+1], "tcp://") {
				argv[i+1] = argv[i+1][:j+1] + strconv.Itoa(p.kvEvents)
			}
		}
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "PORT":
			kv = "PORT=" + strconv.Itoa(p.engine)
		case "KV_EVENTS_PORT":
			kv = "KV_EVENTS_PORT=" + strconv.Itoa(p.kvEvents)
		case "GROUP_PORT":
			kv = "GROUP_PORT=" + strconv.Itoa(p.group)
		}
		out = append(out, kv)
	}
	return argv, out
}

// engineStart measures the engines' own start: it runs a copy of a
// running group's engine processes alone (the same argv and environment,
// read from /proc, on fresh ports, the leader first as the runtime starts
// them, with no queue-proxy and no Kvasir), and returns the time from
// starting the leader to its /health answering 200, polled every 5 ms.
// The copies are stopped before it returns.
func engineStart(ctx context.Context, pids []int, logDir, name string) (time.Duration, error) {
	leader := enginePorts{engine: benchkit.FreePort(), kvEvents: benchkit.FreePort(), group: benchkit.FreePort()}
	var cmds []*exec.Cmd
	defer func() {
		for _, c := range cmds {
			stopCopy(c)
		}
	}()
	type copyCmd struct {
		argv, env []string
	}
	var copies []copyCmd
	for rank, pid := range pids {
		argv, env, err := procArgv(pid)
		if err != nil {
			return 0, fmt.Errorf("rank %d (pid %d): %w", rank, pid, err)
		}
		p := leader
		if rank > 0 {
			p.engine, p.kvEvents = benchkit.FreePort(), benchkit.FreePort()
		}
		argv, env = rehome(argv, env, p)
		copies = append(copies, copyCmd{argv, env})
	}
	var logs []*os.File
	defer func() {
		for _, f := range logs {
			f.Close()
		}
	}()
	for rank, cp := range copies {
		f, err := os.Create(filepath.Join(logDir, fmt.Sprintf("%s-rank%d.log", name, rank)))
		if err != nil {
			return 0, err
		}
		logs = append(logs, f)
		c := exec.Command(cp.argv[0], cp.argv[1:]...)
		c.Env, c.Stdout, c.Stderr = cp.env, f, f
		c.SysProcAttr = process.DieWithParent(&syscall.SysProcAttr{Setpgid: true})
		cmds = append(cmds, c)
	}
	start := time.Now()
	for rank, c := range cmds {
		if err := c.Start(); err != nil {
			cmds = cmds[:rank]
			return 0, fmt.Errorf("start rank %d: %w", rank, err)
		}
	}
	url := "http://127.0.0.1:" + strconv.Itoa(leader.engine) + "/health"
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := start.Add(time.Minute)
	for {
		if resp, err := client.Get(url); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start), nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the engines alone were not ready within a minute (logs in %s)", logDir)
		}
		if err := benchkit.Sleep(ctx, 5*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// stopCopy ends a copied engine (SIGTERM to its process group, SIGKILL
// after 5 s) and reaps it.
func stopCopy(c *exec.Cmd) {
	if c.Process == nil {
		return
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
	}
}
