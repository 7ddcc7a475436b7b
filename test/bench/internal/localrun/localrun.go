package localrun

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// StopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 40 * time.Second

// Options say how to run `kvasir local`.
type Options struct {
	// Binary is the kvasir binary.
	Binary string
	// File is the fleet file (-f).
	File string
	// LogDir receives the platform's own log (kvasir-local.log) and its
	// replicas' logs (--log-dir).
	LogDir string
	// Flags are more flags of `kvasir local` (--accelerators, ...).
	Flags []string
	// Env is added to this program's environment.
	Env []string
}

// Platform is a running `kvasir local`.
type Platform struct {
	// Base is the OpenAI API's base URL (http://127.0.0.1:PORT) and Admin
	// the admin listener's (/kvasir/replicas, /metrics).
	Base, Admin string
	// LogFile is kvasir local's own log.
	LogFile string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has ended

	mu      sync.Mutex
	waitErr error
	stopped bool
}

// Build builds ./cmd/kvasir into dir and returns the binary's path. Run it
// from within the repository.
func Build(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "kvasir")
	fmt.Fprintf(os.Stderr, "building kvasir into %s\n", bin)
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kvasir-serving/kvasir/cmd/kvasir")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/kvasir (run from the repository, or pass --kvasir): %w", err)
	}
	return bin, nil
}

// Start runs `kvasir local` as opts say, on free loopback ports, and
// returns once it has started; Wait tells when it serves. On error the
// process is not running.
func Start(opts Options) (*Platform, error) {
	if err := os.MkdirAll(opts.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	p := &Platform{LogFile: filepath.Join(opts.LogDir, "kvasir-local.log"), exited: make(chan struct{})}
	logf, err := os.Create(p.LogFile)
	if err != nil {
		return nil, err
	}
	port, adminPort := benchkit.FreePort(), benchkit.FreePort()
	p.Base = "http://127.0.0.1:" + strconv.Itoa(port)
	p.Admin = "http://127.0.0.1:" + strconv.Itoa(adminPort)
	argv := append([]string{"local", "-f", opts.File, "--addr", "127.0.0.1:" + strconv.Itoa(port),
		"--admin-addr", "127.0.0.1:" + strconv.Itoa(adminPort), "--log-dir", opts.LogDir}, opts.Flags...)
	p.cmd = exec.Command(opts.Binary, argv...)
	p.cmd.Env = append(os.Environ(), opts.Env...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// Pdeathsig ends kvasir local if we die; its replicas have their own.
	p.cmd.SysProcAttr = process.DieWithParent(nil)
	fmt.Fprintf(os.Stderr, "starting %s %s\n", opts.Binary, strings.Join(argv, " "))
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start kvasir local: %w", err)
	}
	go func() {
		err := p.cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

// Alive returns an error, with the end of the platform's log, when kvasir
// local has exited without Stop.
func (p *Platform) Alive() error {
	select {
	case <-p.exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopped {
			return nil
		}
		return fmt.Errorf("kvasir local exited unexpectedly (%v); its log: %s\n%s", p.waitErr, p.LogFile, Tail(p.LogFile, 20))
	default:
		return nil
	}
}

// Replicas reads the platform's /kvasir/replicas.
func (p *Platform) Replicas() ([]local.RevisionStatus, error) { return benchkit.Replicas(p.Admin) }

// PID is kvasir local's process id.
func (p *Platform) PID() int { return p.cmd.Process.Pid }

// Wait polls /kvasir/replicas every interval until cond holds, the
// platform exits, ctx ends or timeout passes; what names the condition in
// the error, which also shows the last replicas read (or why none could
// be read).
func (p *Platform) Wait(ctx context.Context, timeout, interval time.Duration, what string, cond func([]local.RevisionStatus) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := p.Alive(); err != nil {
			return err
		}
		st, err := p.Replicas()
		if err == nil && cond(st) {
			return nil
		}
		if time.Now().After(deadline) {
			last := "replicas: " + summary(st)
			if err != nil {
				last = fmt.Sprintf("last read error: %v", err)
			}
			return fmt.Errorf("timed out after %s waiting for %s (%s)", timeout, what, last)
		}
		if err := benchkit.Sleep(ctx, interval); err != nil {
			return err
		}
	}
}

// Stop ends kvasir local: SIGTERM (it drains and stops its replicas), then
// SIGKILL after StopTimeout. It returns when the process is gone; calling
// it again does nothing.
func (p *Platform) Stop() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(StopTimeout):
		fmt.Fprintf(os.Stderr, "kvasir local did not stop within %s of SIGTERM; killing it\n", StopTimeout)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// StopAll stops the platforms at once (as Stop does; nil ones are skipped)
// and returns when all are gone.
func StopAll(ps []*Platform) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(p.Stop)
	}
	wg.Wait()
}

// summary describes each revision role of a /kvasir/replicas read in one
// line ("none" when there is none).
func summary(st []local.RevisionStatus) string {
	if len(st) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(st))
	for _, r := range st {
		parts = append(parts, fmt.Sprintf("%s/%s desired %d ready %d unplaceable %d", r.Service, r.Role, r.Desired, r.Ready, r.Unplaceable))
	}
	return strings.Join(parts, "; ")
}

// Tail returns the last n lines of a file ("" when it cannot be read).
func Tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
