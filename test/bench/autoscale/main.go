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
	"path/filepath"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
	"github.com/kvasir-serving/kvasir/test/bench/internal/localrun"
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

// startPlatform builds kvasir when needed and runs `kvasir local` on the
// fleet file in a new Workdir, waiting until every ModelService shows up in
// /kvasir/replicas. The Workdir, when not nil, is to be closed (with the
// platform in it) whether or not there is an error.
func startPlatform(ctx context.Context, c *common, svcs []*v1alpha1.ModelService) (*localrun.Workdir, *localrun.Platform, error) {
	w, err := localrun.NewWorkdir(ctx, "kvasir-autoscale-", c.kvasir, c.logDir)
	if err != nil {
		return nil, nil, err
	}
	flags := []string{"--scale-interval", c.scaleInterval.String()}
	if c.accelerators != "" {
		flags = append(flags, "--accelerators", c.accelerators)
	}
	p, err := w.Start(localrun.Options{File: c.file, Flags: flags})
	if err != nil {
		return w, nil, err
	}
	what := "every ModelService of " + c.file
	return w, p, p.Wait(ctx, c.startTimeout, poll, what, func(st []local.RevisionStatus) bool { return haveAll(st, svcs) })
}

// poll is how often a benchmark reads /kvasir/replicas while it waits.
const poll = 50 * time.Millisecond

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

// find returns the unified (or decode) role of a service.
func find(st []local.RevisionStatus, service string) (local.RevisionStatus, bool) {
	for _, r := range st {
		if r.Service == service && (r.Role == "unified" || r.Role == "decode") {
			return r, true
		}
	}
	return local.RevisionStatus{}, false
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
