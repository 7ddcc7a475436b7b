package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/bench"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// streams holds N concurrent SSE streams through activator -> queue-proxy ->
// simulator and reports the peak RSS of the activator and the queue-proxy.
func streams(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("streams", flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory with the built binaries")
	n := fs.Int("streams", 2000, "concurrent streams")
	outLen := fs.Int("output-len", 200, "tokens per stream")
	qpProcs := fs.Int("queue-proxy-gomaxprocs", 0, "GOMAXPROCS of the queue-proxy, pinned (0: not pinned; the queue-proxy fits it to its use, pkg/maxprocs)")
	heap := fs.String("heap-profile", "", "save the activator's heap profile (after a collection) to this file once it holds 90% of the streams (the profile is built in the activator: its peak RSS then counts it)")
	_ = fs.Parse(args)
	p, err := newProcs()
	if err != nil {
		return err
	}
	defer p.close()
	d, err := startPath(ctx, p, *bin, nil, gomaxprocsEnv(*qpProcs), nil, "--time-scale", "10", "--max-num-seqs", strconv.Itoa(*n*2),
		"--max-num-batched-tokens", strconv.Itoa(*n*4))
	if err != nil {
		return err
	}
	var peakInFlight atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // watch how many streams are open at once, from the activator's metric
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if v, ok := scrapeGauge(d.actAdmin+"/metrics", "kvasir_activator_in_flight_requests"); ok && int64(v) > peakInFlight.Load() {
				peakInFlight.Store(int64(v))
				if *heap != "" && int(v) >= *n*9/10 {
					if err := saveProfile(d.actAdmin+"/debug/pprof/heap?gc=1", *heap); err != nil {
						fmt.Println("heap profile:", err)
					}
					if err := saveProfile(d.actAdmin+"/debug/pprof/heap?debug=1", *heap+".txt"); err != nil {
						fmt.Println("heap profile:", err)
					}
					*heap = ""
				}
			}
		}
	}()
	cfg := bench.DefaultConfig()
	cfg.Target, cfg.Model, cfg.Rate, cfg.MaxConcurrency, cfg.NumPrompts = d.act, "m", 0, *n, *n
	cfg.Stream, cfg.Workload, cfg.InputLen, cfg.OutputLen = true, bench.WorkloadRandom, 32, *outLen
	r, err := bench.Run(ctx, cfg)
	close(stop)
	<-sampled
	if err != nil {
		return err
	}
	actHWM, err := vmHWM(d.actCmd.Process.Pid)
	if err != nil {
		return err
	}
	qpHWM, err := vmHWM(d.qpCmd.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("\n%d concurrent SSE streams of %d tokens (activator -> queue-proxy -> simulator):\n\n", *n, *outLen)
	fmt.Println("| measure | value |\n| --- | ---: |")
	fmt.Printf("| completed / errors | %d / %d |\n", r.Completed, r.Errors)
	fmt.Printf("| peak streams in flight at the activator | %d |\n", peakInFlight.Load())
	fmt.Printf("| activator peak RSS (VmHWM) | %.1f MiB |\n", float64(actHWM)/1024)
	fmt.Printf("| queue-proxy peak RSS (VmHWM) | %.1f MiB |\n", float64(qpHWM)/1024)
	fmt.Printf("| output tokens/s | %.0f |\n", r.OutputTokensPerS)
	if r.Errors > 0 {
		return fmt.Errorf("%d streams failed: %+v", r.Errors, r.ErrorExamples)
	}
	return nil
}

// vmHWM returns the peak resident set size of a process in KiB.
func vmHWM(pid int) (int64, error) { return benchkit.ProcStatusKiB(pid, "VmHWM") }
