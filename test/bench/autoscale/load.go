package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/bench"
)

// loadSpec is one run of the load generator (pkg/bench, the library of
// `kvasir bench run`): the random workload, streaming.
type loadSpec struct {
	model string
	// rate > 0: open loop (Poisson) at rate req/s, at most concurrency in
	// flight; rate 0: closed loop with concurrency requests in flight.
	rate        float64
	concurrency int
	duration    time.Duration // 0: until numPrompts are done
	numPrompts  int           // 0: enough for duration
	inputLen    int
	outputLen   int
	seed        int64
}

// reqRec is one request as the harness saw it: sent (the workload handed
// it to the client) and finished.
type reqRec struct {
	Start, End time.Time
	Err        string
}

// loadRun is the outcome of a loadSpec.
type loadRun struct {
	res         *bench.Result
	recs        []reqRec // in issue order
	first, last time.Time
	lastEnd     time.Time
}

// tracked wraps a workload to record when each request is sent and done.
type tracked struct {
	bench.Workload
	mu    sync.Mutex
	idx   map[*bench.Request]int
	recs  []reqRec
	first time.Time
	last  time.Time
}

func (t *tracked) Next(ctx context.Context) (*bench.Request, error) {
	r, err := t.Workload.Next(ctx)
	if err != nil {
		return r, err
	}
	now := time.Now()
	t.mu.Lock()
	if len(t.recs) == 0 {
		t.first = now
	}
	t.last = now
	t.idx[r] = len(t.recs)
	t.recs = append(t.recs, reqRec{Start: now})
	t.mu.Unlock()
	return r, nil
}

func (t *tracked) Complete(r *bench.Request, answer string, err error) {
	now := time.Now()
	t.mu.Lock()
	if i, ok := t.idx[r]; ok {
		t.recs[i].End = now
		if err != nil {
			t.recs[i].Err = err.Error()
		}
	}
	t.mu.Unlock()
	t.Workload.Complete(r, answer, err)
}

// runLoad drives ls against base and fails when the workload ran out of
// requests before the duration (the run would understate the load).
func runLoad(ctx context.Context, base string, ls loadSpec) (*loadRun, error) {
	cfg := bench.DefaultConfig()
	cfg.Target, cfg.Model = base, ls.model
	cfg.Workload, cfg.InputLen, cfg.OutputLen, cfg.Stream = bench.WorkloadRandom, ls.inputLen, ls.outputLen, true
	cfg.Rate, cfg.MaxConcurrency, cfg.Duration, cfg.Seed = ls.rate, ls.concurrency, ls.duration, ls.seed
	cfg.Timeout = 10 * time.Minute
	n := ls.numPrompts
	if n == 0 {
		secs := ls.duration.Seconds()
		if ls.rate > 0 {
			n = int(ls.rate*secs*1.3) + 100
		} else {
			// Closed loop: enough for requests of 0.25 s.
			n = int(float64(ls.concurrency)*secs*4) + ls.concurrency
		}
	}
	cfg.NumPrompts = n
	w, err := bench.NewWorkload(cfg)
	if err != nil {
		return nil, err
	}
	tw := &tracked{Workload: w, idx: make(map[*bench.Request]int, n)}
	res, err := bench.RunWorkload(ctx, cfg, tw)
	if err != nil {
		return nil, err
	}
	lr := &loadRun{res: res, recs: tw.recs, first: tw.first, last: tw.last}
	for _, r := range lr.recs {
		if r.End.After(lr.lastEnd) {
			lr.lastEnd = r.End
		}
	}
	if ls.duration > 0 && len(lr.recs) >= n && lr.last.Sub(lr.first) < ls.duration*95/100 {
		return lr, fmt.Errorf("the workload's %d requests ran out after %s of the %s load: raise --num-prompts",
			n, lr.last.Sub(lr.first).Round(time.Millisecond), ls.duration)
	}
	return lr, nil
}

// errorsIn counts the failed requests sent within [from, to).
func (lr *loadRun) errorsIn(from, to time.Time) (sent, failed int) {
	for _, r := range lr.recs {
		if r.Start.Before(from) || !r.Start.Before(to) {
			continue
		}
		sent++
		if r.Err != "" {
			failed++
		}
	}
	return sent, failed
}

// e2ePercentile returns the p-th percentile (0..100) of the end-to-end
// latency of the successful requests sent within [from, to).
func (lr *loadRun) e2ePercentile(from, to time.Time, p float64) float64 {
	var v []float64
	for _, r := range lr.recs {
		if r.Err == "" && !r.Start.Before(from) && r.Start.Before(to) {
			v = append(v, r.End.Sub(r.Start).Seconds())
		}
	}
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	i := int(p / 100 * float64(len(v)-1))
	return v[i]
}
