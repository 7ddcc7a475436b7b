package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// modelName is the model the simulated ModelService serves.
const modelName = "chaos"

// Options configure a chaos run.
type Options struct {
	// Bin is the directory holding the kvasir and activator binaries.
	Bin string
	// Dir is the work directory: the ModelService file and every log.
	Dir string
	// Replicas of the model (minScale = maxScale), and activator processes
	// of the activator faults.
	Replicas, Activators int
	// TimeScale is the simulator's --time-scale: below 1 it runs slower than
	// real time, so that requests are in flight long enough to be hit.
	TimeScale float64
	// Load is the steady load of every phase.
	Load loadConfig
	// Before is how long the load runs before the fault (at least
	// MinBefore requests end first); After how long it runs after the fleet
	// recovered (at least MinAfter requests sent after it end).
	Before, After       time.Duration
	MinBefore, MinAfter int
	// Timeout bounds every wait on the fleet: start, recovery, the victim
	// having requests in flight.
	Timeout time.Duration
	// Logf reports progress.
	Logf func(format string, args ...any)
}

// harness is a running fleet: `kvasir local --activators N` with a simulated
// model, and, for the activator faults, activator processes in front of its
// queue-proxies. Create it with newHarness; close it with close.
type harness struct {
	opts   Options
	ctl    *http.Client // control requests: replicas, metrics
	local  *proc
	url    string           // kvasir local's OpenAI API
	admin  string           // kvasir local's admin listener
	pids   map[int]bool     // every replica process seen; none may outlive close
	acts   []*activatorProc // nil until the activator phases
	actSeq int
}

// activatorProc is one activator process in front of the queue-proxies.
type activatorProc struct {
	*proc
	url      string   // its OpenAI API
	backends []string // the queue-proxies it routes to
}

var (
	localServing     = regexp.MustCompile(`kvasir local is serving.* addr=(\S+) admin=(\S+)`)
	activatorServing = regexp.MustCompile(`activator serving.* addr=(\S+) admin=(\S+)`)
)

// newHarness starts `kvasir local --activators N` and waits for every
// replica to be ready.
func newHarness(ctx context.Context, opts Options) (*harness, error) {
	doc := fmt.Sprintf(`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: %[1]s}
spec:
  model: %[1]s
  template:
    engine:
      type: sim
      args: ["--time-scale=%[2]g"]
    scaling: {minScale: %[3]d, maxScale: %[3]d, initialScale: %[3]d}
`, modelName, opts.TimeScale, opts.Replicas)
	file := filepath.Join(opts.Dir, "models.yaml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		return nil, err
	}
	h := &harness{opts: opts, ctl: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		pids: map[int]bool{}}
	p, addrs, err := startProc(ctx, opts.Dir, "kvasir-local", localServing, opts.Timeout,
		filepath.Join(opts.Bin, "kvasir"), "local", "-f", file, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--activators", strconv.Itoa(opts.Activators), "--log-dir", filepath.Join(opts.Dir, "replicas"))
	if err != nil {
		return nil, err
	}
	h.local, h.url, h.admin = p, "http://"+addrs[0], "http://"+addrs[1]
	if _, err := h.waitReady(ctx, ""); err != nil {
		return nil, errors.Join(err, h.close())
	}
	return h, nil
}

// replicas returns the replicas of the model's only revision.
func (h *harness) replicas() (local.RevisionStatus, error) {
	resp, err := h.ctl.Get(h.admin + "/kvasir/replicas")
	if err != nil {
		return local.RevisionStatus{}, err
	}
	defer resp.Body.Close()
	var revs []local.RevisionStatus
	if err := json.NewDecoder(resp.Body).Decode(&revs); err != nil {
		return local.RevisionStatus{}, err
	}
	if len(revs) != 1 {
		return local.RevisionStatus{}, fmt.Errorf("/kvasir/replicas lists %d revisions, want 1", len(revs))
	}
	for _, r := range revs[0].Replicas {
		h.pids[r.EnginePID], h.pids[r.ProxyPID] = true, true
	}
	return revs[0], nil
}

// waitReady waits until every desired replica is ready (and gone, the
// replica named gone); it returns them.
func (h *harness) waitReady(ctx context.Context, gone string) ([]local.ReplicaStatus, error) {
	var reps []local.ReplicaStatus
	what := fmt.Sprintf("%d ready replicas", h.opts.Replicas)
	if gone != "" {
		what += ", " + gone + " replaced"
	}
	err := waitFor(ctx, h.opts.Timeout, what, func() (bool, error) {
		st, err := h.replicas()
		if err != nil {
			return false, err
		}
		if st.Ready != h.opts.Replicas || len(st.Replicas) != h.opts.Replicas {
			return false, nil
		}
		for _, r := range st.Replicas {
			if r.State != "Ready" || r.Name == gone {
				return false, nil
			}
		}
		reps = st.Replicas
		return true, nil
	})
	return reps, err
}

// scrape returns the sum of a metric's series at url (0 when absent).
func (h *harness) scrape(url, name string) (float64, error) {
	resp, err := h.ctl.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, err
	}
	sum := 0.0
	if fam, ok := fams[name]; ok {
		for _, m := range fam.Metric {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum, nil
}

// retries returns the retries counted by kvasir local's activators.
func (h *harness) retries() (float64, error) {
	return h.scrape(h.admin+"/metrics", "kvasir_activator_retries_total")
}

// close stops the activators and `kvasir local`, and checks that every
// process it started or saw is gone.
func (h *harness) close() error {
	var errs []error
	for _, a := range h.acts {
		if a != nil {
			errs = append(errs, a.stop(60*time.Second))
		}
	}
	if h.local != nil {
		if h.local.alive() {
			_, _ = h.replicas() // the last word on which replica processes exist
		}
		errs = append(errs, h.local.stop(90*time.Second))
	}
	var left []string
	for pid := range h.pids {
		if pid > 0 && pidAlive(pid) {
			left = append(left, strconv.Itoa(pid))
		}
	}
	if len(left) > 0 {
		sort.Strings(left)
		errs = append(errs, fmt.Errorf("replica processes still run after kvasir local stopped: %s", strings.Join(left, ", ")))
	}
	return errors.Join(errs...)
}

// startActivator runs an activator process in front of backends (static
// queue-proxy addresses) and waits until it serves.
func (h *harness) startActivator(ctx context.Context, backends []string) (*activatorProc, error) {
	h.actSeq++
	argv := []string{filepath.Join(h.opts.Bin, "activator"), "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--model", modelName}
	for _, b := range backends {
		argv = append(argv, "--backend", b)
	}
	p, addrs, err := startProc(ctx, h.opts.Dir, "activator-"+strconv.Itoa(h.actSeq), activatorServing, h.opts.Timeout, argv...)
	if err != nil {
		return nil, err
	}
	a := &activatorProc{proc: p, url: "http://" + addrs[0], backends: backends}
	err = waitFor(ctx, h.opts.Timeout, a.name+" healthy", func() (bool, error) {
		resp, err := h.ctl.Get(a.url + "/healthz")
		if err != nil {
			return false, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		p.kill()
		return nil, err
	}
	return a, nil
}

// ensureActivators starts the activator processes that do not run (all of
// them the first time, the one a fault ended afterwards, as a Deployment
// would), in front of the queue-proxies of the ready replicas.
func (h *harness) ensureActivators(ctx context.Context) error {
	reps, err := h.waitReady(ctx, "")
	if err != nil {
		return err
	}
	backends := make([]string, 0, len(reps))
	for _, r := range reps {
		backends = append(backends, r.Address)
	}
	sort.Strings(backends)
	if h.acts == nil {
		h.acts = make([]*activatorProc, h.opts.Activators)
	}
	for i, a := range h.acts {
		if a != nil && a.alive() {
			if !slices.Equal(a.backends, backends) {
				return fmt.Errorf("%s routes to %v but the replicas are now %v", a.name, a.backends, backends)
			}
			continue
		}
		if h.acts[i], err = h.startActivator(ctx, backends); err != nil {
			return err
		}
	}
	return nil
}

// signalPID sends sig to a replica process of kvasir local.
func signalPID(pid int, sig syscall.Signal) error {
	if pid <= 0 {
		return fmt.Errorf("no process id")
	}
	return syscall.Kill(pid, sig)
}
