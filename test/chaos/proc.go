package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
)

// proc is a process the harness started. It dies with the harness, even when
// the harness is killed hard (process.DieWithParent), and its output goes to
// a log file in the work directory.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // the log file's path
	// done is closed once the process has exited and been reaped; exited
	// is the moment that was seen (read it after done).
	done   chan struct{}
	exited time.Time
}

// startProc runs argv, logging to dir/name.log, and waits up to timeout for
// a line of its standard error to match ready; it returns the match's
// submatches. A process that exits or does not get ready in time is killed
// and reported with the end of its log.
func startProc(ctx context.Context, dir, name string, ready *regexp.Regexp, timeout time.Duration, argv ...string) (*proc, []string, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, nil, err
	}
	cmd.SysProcAttr = process.DieWithParent(nil)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	match := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if m := ready.FindStringSubmatch(line); m != nil {
				select {
				case match <- m[1:]:
				default:
				}
			}
		}
		_, _ = io.Copy(logf, stderr) // after an over-long line: keep the rest
		_ = cmd.Wait()
		p.exited = time.Now()
		logf.Close()
		close(p.done)
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case m := <-match:
		return p, m, nil
	case <-p.done:
		return nil, nil, fmt.Errorf("%s exited before it was ready:\n%s", name, tail(logPath, 40))
	case <-timer.C:
		err = fmt.Errorf("%s was not ready within %s:\n%s", name, timeout, tail(logPath, 40))
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.kill()
	return nil, nil, err
}

// alive reports whether the process has not exited yet.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig to the process (nothing once it has exited).
func (p *proc) signal(sig syscall.Signal) error {
	if !p.alive() {
		return fmt.Errorf("%s has already exited", p.name)
	}
	return p.cmd.Process.Signal(sig)
}

// stop asks the process to end (SIGTERM) and kills it when it has not
// within timeout; it reports a process that had to be killed.
func (p *proc) stop(timeout time.Duration) error {
	if !p.alive() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	p.kill()
	return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, timeout)
}

// kill ends the process with SIGKILL and waits until it is reaped.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// tail returns the last n lines of a file, for error reports.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// pidAlive reports whether a process with pid exists (a child of another
// process, such as a replica of `kvasir local`, is reaped by its parent).
func pidAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// waitFor polls cond every 20ms until it holds, and fails when it has not
// within timeout (or ctx ends): bounded waits on observable state, never
// sleeps as synchronisation. The error names what was awaited and the last
// error cond returned.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-deadline.C:
			if last != nil {
				return fmt.Errorf("%s: not within %s (last error: %v)", what, timeout, last)
			}
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-tick.C:
		}
	}
}
