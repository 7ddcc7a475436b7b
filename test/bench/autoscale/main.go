// Command autoscale benchmarks the autoscaler of `kvasir local` end to end:
// real processes on loopback, simulated engines, load from pkg/bench (the
// library behind `kvasir bench run`), and the platform's /kvasir/replicas
// sampled every 100 ms into a timeline.
//
//	go run ./test/bench/autoscale step        # 0 -> 20 replicas' worth of load at once
//	go run ./test/bench/autoscale steady      # constant load for 5 minutes: no flapping
//	go run ./test/bench/autoscale idle        # burst, silence, scale to zero, wake
//	go run ./test/bench/autoscale two-models  # two models alternate on 2 GPUs
//
// Each benchmark starts its own `kvasir local` on the fleet file
// examples/bench/autoscale/<name>.yaml (flag -f), prints a table, writes
// everything (settings, results, goals, timeline) to --json OUT when asked,
// and exits 1 with the goals it missed named on stderr. Run it from the
// repository root. The kvasir binary is built into a temporary directory
// unless --kvasir names one. The platform's logs go to a temporary
// directory that is kept (and named) when the run fails, or to --log-dir.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

func main() {
	benchkit.Main("autoscale", "autoscale step|steady|idle|two-models [flags]", map[string]benchkit.Benchmark{
		"step": step, "steady": steady, "idle": idle, "two-models": twoModels,
	}, " (want step, steady, idle or two-models)")
}

// common are the flags every benchmark has.
type common struct {
	name          string
	kvasir        string
	file          string
	jsonOut       string
	logDir        string
	scaleInterval time.Duration
	sample        time.Duration
	accelerators  string
	startTimeout  time.Duration
	inputLen      int // prompt tokens per request
	outputLen     int // output tokens per request
}

func (c *common) register(fs *flag.FlagSet, name, accelerators string) {
	c.name = name
	fs.StringVar(&c.kvasir, "kvasir", "", "the kvasir binary (default: go build ./cmd/kvasir into a temporary directory)")
	fs.StringVar(&c.file, "f", filepath.Join("examples", "bench", "autoscale", name+".yaml"), "fleet file with the ModelService documents")
	fs.StringVar(&c.jsonOut, "json", "", "also write settings, results, goals and the timeline as JSON to this file")
	fs.StringVar(&c.logDir, "log-dir", "", "keep the platform's and replicas' logs here (default: a temporary directory, kept only when the run fails)")
	fs.DurationVar(&c.scaleInterval, "scale-interval", time.Second, "kvasir local --scale-interval (the scaler's tick)")
	fs.DurationVar(&c.sample, "sample-interval", 100*time.Millisecond, "how often /kvasir/replicas and /metrics are sampled")
	fs.StringVar(&c.accelerators, "accelerators", accelerators, "kvasir local --accelerators (empty: not counted)")
	fs.DurationVar(&c.startTimeout, "start-timeout", time.Minute, "how long the platform may take to answer /healthz and show its revisions")
	fs.IntVar(&c.inputLen, "input-len", 64, "prompt tokens per request")
	fs.IntVar(&c.outputLen, "output-len", 32, "output tokens per request")
}

// fleet reads the fleet file as the platform will.
func (c *common) fleet() ([]*v1alpha1.ModelService, error) {
	svcs, err := local.LoadFile(c.file)
	if err != nil && errors.Is(err, os.ErrNotExist) && !filepath.IsAbs(c.file) {
		return nil, fmt.Errorf("%w (run from the repository root, or pass -f)", err)
	}
	return svcs, err
}

// oneService reads a fleet file of exactly one ModelService and returns it
// with its defaulted scaling spec.
func (c *common) oneService() (*v1alpha1.ModelService, v1alpha1.ScalingSpec, error) {
	svcs, err := c.fleet()
	if err != nil {
		return nil, v1alpha1.ScalingSpec{}, err
	}
	if len(svcs) != 1 {
		return nil, v1alpha1.ScalingSpec{}, fmt.Errorf("%s: want one ModelService, found %d", c.file, len(svcs))
	}
	return svcs[0], scalingOf(svcs[0]), nil
}

// platform is a running `kvasir local` subprocess.
type platform struct {
	base    string // http://127.0.0.1:PORT, the OpenAI API
	admin   string // the admin listener: /kvasir/replicas, /metrics
	dir     string // temp dir: binary, logs
	logDir  string // replicas' logs
	logFile string // kvasir local's own log
	keepDir bool   // the user's --log-dir: never removed
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process ended
	waitErr error
	stopped bool
	mu      sync.Mutex
}

// startPlatform builds kvasir when needed and runs `kvasir local` on the
// fleet file, waiting for /healthz and for every ModelService to show up
// in /kvasir/replicas.
func startPlatform(ctx context.Context, c *common, svcs []*v1alpha1.ModelService) (*platform, error) {
	dir, err := os.MkdirTemp("", "kvasir-autoscale-")
	if err != nil {
		return nil, err
	}
	p := &platform{dir: dir, exited: make(chan struct{})}
	bin := c.kvasir
	if bin == "" {
		bin = filepath.Join(dir, "kvasir")
		fmt.Fprintf(os.Stderr, "building kvasir into %s\n", bin)
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kvasir-serving/kvasir/cmd/kvasir")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("go build ./cmd/kvasir (run from the repository, or pass --kvasir): %w", err)
		}
	}
	p.logDir = filepath.Join(dir, "logs")
	if c.logDir != "" {
		p.logDir, p.keepDir = c.logDir, true
	}
	p.logFile = filepath.Join(p.logDir, "kvasir-local.log")
	if err := os.MkdirAll(p.logDir, 0o755); err != nil {
		return p, err
	}
	logf, err := os.Create(p.logFile)
	if err != nil {
		return p, err
	}
	port, adminPort := benchkit.FreePort(), benchkit.FreePort()
	p.base = "http://127.0.0.1:" + strconv.Itoa(port)
	p.admin = "http://127.0.0.1:" + strconv.Itoa(adminPort)
	argv := []string{"local", "-f", c.file, "--addr", "127.0.0.1:" + strconv.Itoa(port),
		"--admin-addr", "127.0.0.1:" + strconv.Itoa(adminPort), "--log-dir", p.logDir,
		"--scale-interval", c.scaleInterval.String()}
	if c.accelerators != "" {
		argv = append(argv, "--accelerators", c.accelerators)
	}
	p.cmd = exec.Command(bin, argv...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// Pdeathsig ends kvasir local if we die; its replicas have their own.
	p.cmd.SysProcAttr = process.DieWithParent(nil)
	fmt.Fprintf(os.Stderr, "starting %s %s\n", bin, strings.Join(argv, " "))
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		p.cmd = nil
		return p, fmt.Errorf("start kvasir local: %w", err)
	}
	go func() {
		err := p.cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.exited)
	}()
	deadline := time.Now().Add(c.startTimeout)
	for {
		if err := p.alive(); err != nil {
			return p, err
		}
		st, err := p.replicas()
		if err == nil && haveAll(st, svcs) {
			return p, nil
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("kvasir local did not serve every ModelService of %s within %s (last: %v)", c.file, c.startTimeout, err)
		}
		if err := benchkit.Sleep(ctx, 50*time.Millisecond); err != nil {
			return p, err
		}
	}
}

func haveAll(st []local.RevisionStatus, svcs []*v1alpha1.ModelService) bool {
	for _, ms := range svcs {
		found := false
		for _, r := range st {
			found = found || r.Service == ms.Name
		}
		if !found {
			return false
		}
	}
	return true
}

// alive returns an error when kvasir local has exited on its own.
func (p *platform) alive() error {
	select {
	case <-p.exited:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopped {
			return nil
		}
		return fmt.Errorf("kvasir local exited unexpectedly (%v); its log: %s\n%s", p.waitErr, p.logFile, tail(p.logFile, 20))
	default:
		return nil
	}
}

func (p *platform) replicas() ([]local.RevisionStatus, error) { return benchkit.Replicas(p.admin) }

// close stops kvasir local (SIGTERM: it drains and stops its replicas),
// then removes the temporary directory unless keep (the run failed) or the
// logs are the user's.
func (p *platform) close(keep bool) {
	if p == nil {
		return
	}
	if p.cmd != nil && p.cmd.Process != nil {
		p.mu.Lock()
		p.stopped = true
		p.mu.Unlock()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(40 * time.Second):
			fmt.Fprintln(os.Stderr, "kvasir local did not stop within 40s of SIGTERM; killing it")
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
	switch {
	case p.keepDir:
		fmt.Fprintf(os.Stderr, "logs: %s\n", p.logDir)
		if !keep {
			// The binary we built, if any, is not the user's.
			os.RemoveAll(p.dir)
		}
	case keep:
		fmt.Fprintf(os.Stderr, "logs kept: %s\n", p.logDir)
	default:
		os.RemoveAll(p.dir)
	}
}

// waitFor polls the platform until cond holds for its replicas.
func (p *platform) waitFor(ctx context.Context, timeout time.Duration, what string, cond func([]local.RevisionStatus) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := p.alive(); err != nil {
			return err
		}
		st, err := p.replicas()
		if err == nil && cond(st) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s (replicas: %s)", timeout, what, summary(st))
		}
		if err := benchkit.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func summary(st []local.RevisionStatus) string {
	var parts []string
	for _, r := range st {
		parts = append(parts, fmt.Sprintf("%s/%s desired %d ready %d unplaceable %d", r.Service, r.Role, r.Desired, r.Ready, r.Unplaceable))
	}
	return strings.Join(parts, "; ")
}

// find returns the unified (or decode) role of a service.
func find(st []local.RevisionStatus, service string) (local.RevisionStatus, bool) {
	for _, r := range st {
		if r.Service == service && (r.Role == "unified" || r.Role == "decode") {
			return r, true
		}
	}
	return local.RevisionStatus{}, false
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
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

// logProblems returns the distinct WARN and ERROR lines of the platform's
// log (time stripped, at most max, each with its count) and how many such
// lines there were in all.
func logProblems(path string, max int) ([]string, int) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0
	}
	var order []string
	count := map[string]int{}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		n++
		if i := strings.Index(l, "level="); i > 0 {
			l = l[i:]
		}
		if count[l] == 0 {
			order = append(order, l)
		}
		count[l]++
	}
	var out []string
	for _, l := range order {
		if len(out) == max {
			break
		}
		out = append(out, fmt.Sprintf("%dx %s", count[l], l))
	}
	return out, n
}

// scalingOf returns a service's defaulted scaling spec.
func scalingOf(ms *v1alpha1.ModelService) v1alpha1.ScalingSpec {
	return ms.Spec.Template.Scaling
}
