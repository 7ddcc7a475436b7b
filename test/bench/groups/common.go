package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/test/bench/internal/localrun"
)

// common are the flags of the benchmarks that run kvasir local.
type common struct {
	kvasir        string
	file          string
	logDir        string
	accelerators  string
	scaleInterval time.Duration
	startTimeout  time.Duration
}

func (c *common) register(fs *flag.FlagSet, name, accelerators string) {
	fs.StringVar(&c.kvasir, "kvasir", "", "the kvasir binary (default: go build ./cmd/kvasir into a temporary directory)")
	fs.StringVar(&c.file, "f", filepath.Join("examples", "bench", "groups", name+".yaml"), "fleet file with the one grouped ModelService")
	fs.StringVar(&c.logDir, "log-dir", "", "keep the platform's and replicas' logs here (default: a temporary directory, kept only when the run fails)")
	fs.StringVar(&c.accelerators, "accelerators", accelerators, "kvasir local --accelerators")
	fs.DurationVar(&c.scaleInterval, "scale-interval", time.Second, "kvasir local --scale-interval")
	fs.DurationVar(&c.startTimeout, "start-timeout", time.Minute, "how long the platform may take to have its first groups ready")
}

// run is one benchmark's kvasir local and its directories.
type run struct {
	p   *localrun.Platform
	svc *v1alpha1.ModelService
	w   *localrun.Workdir
}

// start reads the fleet file (one ModelService), builds kvasir when
// needed and starts kvasir local.
func (c *common) start(ctx context.Context, extra ...string) (*run, error) {
	svcs, err := local.LoadFile(c.file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !filepath.IsAbs(c.file) {
			err = fmt.Errorf("%w (run from the repository root, or pass -f)", err)
		}
		return nil, err
	}
	if len(svcs) != 1 {
		return nil, fmt.Errorf("%s: want one ModelService, found %d", c.file, len(svcs))
	}
	w, err := localrun.NewWorkdir(ctx, "kvasir-groups-", c.kvasir, c.logDir)
	if err != nil {
		return nil, err
	}
	flags := append([]string{"--scale-interval", c.scaleInterval.String(), "--accelerators", c.accelerators}, extra...)
	p, err := w.Start(localrun.Options{File: c.file, Flags: flags})
	if err != nil {
		os.RemoveAll(w.Tmp)
		return nil, err
	}
	return &run{p: p, svc: svcs[0], w: w}, nil
}

// close stops kvasir local and removes the temporary directory, keeping
// the logs when the run failed.
func (r *run) close(failed bool) {
	if r != nil {
		r.w.Close(failed)
	}
}

// revision returns the service's unified role in a sample.
func revision(st []local.RevisionStatus, service string) (local.RevisionStatus, bool) {
	for _, r := range st {
		if r.Service == service && (r.Role == "unified" || r.Role == "decode") {
			return r, true
		}
	}
	return local.RevisionStatus{}, false
}

// readyGroups counts the replicas of a revision that are Ready.
func readyGroups(r local.RevisionStatus) int {
	n := 0
	for _, rp := range r.Replicas {
		if rp.State == "Ready" {
			n++
		}
	}
	return n
}
