package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"

	"github.com/kvasir-serving/kvasir/pkg/bench"
)

// waits reads a Go execution trace of a hop (the activator's admin
// /debug/pprof/trace, or the queue-proxy's with --admin-addr) and tells
// where its request goroutines waited to run: how long each waited, runnable,
// for a P, and what ran on the process's Ps meanwhile. On one P a request
// that is ready waits for whatever holds the P; that wait is the hop's tail.
func waits(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("waits", flag.ExitOnError)
	long := fs.Duration("wait", 300*time.Microsecond, "a wait longer than this is explained")
	steady := fs.Bool("steady", true, "leave out bursts: 100 ms with more than 10% long waits, and the 100 ms either side (a path's round starting: new connections, warm-up)")
	goroutines := fs.String("goroutines", `fasthttp\.\(\*workerPool\)`, "regexp of the entry function of the request goroutines")
	top := fs.Int("top", 15, "rows of the table of what ran during long waits")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("usage: dataplane waits [flags] TRACE-FILE")
	}
	re, err := regexp.Compile(*goroutines)
	if err != nil {
		return fmt.Errorf("--goroutines: %w", err)
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	tl, err := readTimeline(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", fs.Arg(0), err)
	}
	r := analyzeWaits(tl, waitOpts{long: *long, steady: *steady, request: re.MatchString})
	r.print(os.Stdout, *top)
	return nil
}

// span is one stretch of a goroutine's life: runnable until it ran (a
// wait), or running until it stopped (a run).
type span struct {
	g          trace.GoID
	start, end time.Duration // since the trace's first event
	// what a run did: the goroutine's entry function, then the frames
	// where it stopped; empty for a wait.
	what string
}

func (s span) len() time.Duration { return s.end - s.start }

// timeline is what analyzeWaits needs of a trace.
type timeline struct {
	length time.Duration
	entry  map[trace.GoID]string // entry function of each goroutine seen
	runs   []span                // by start
	waits  []span                // runnable -> running, by end
	ranges []span                // runtime ranges (GC phases, stop-the-world), what = name
}

// readTimeline reads an execution trace into runs, waits and ranges.
func readTimeline(r io.Reader) (*timeline, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, err
	}
	tl := &timeline{entry: map[trace.GoID]string{}}
	runnable := map[trace.GoID]trace.Time{}
	running := map[trace.GoID]trace.Time{}
	type rangeKey struct {
		name  string
		scope trace.ResourceID
	}
	rangeStart := map[rangeKey]trace.Time{}
	var first trace.Time
	since := func(t trace.Time) time.Duration { return time.Duration(t - first) }
	for {
		ev, err := tr.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if first == 0 {
			first = ev.Time()
		}
		tl.length = since(ev.Time())
		switch ev.Kind() {
		case trace.EventRangeBegin, trace.EventRangeActive: // active: open when the trace began
			rangeStart[rangeKey{ev.Range().Name, ev.Range().Scope}] = ev.Time()
		case trace.EventRangeEnd:
			k := rangeKey{ev.Range().Name, ev.Range().Scope}
			if t, ok := rangeStart[k]; ok {
				tl.ranges = append(tl.ranges, span{start: since(t), end: since(ev.Time()), what: k.name})
				delete(rangeStart, k)
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			g := st.Resource.Goroutine()
			from, to := st.Goroutine()
			if from == to {
				continue // a generation's status event: nothing changed
			}
			if e := entryFunc(st.Stack); e != "" {
				tl.entry[g] = e
			}
			switch {
			case to == trace.GoRunnable:
				runnable[g] = ev.Time()
			case to == trace.GoRunning:
				if t, ok := runnable[g]; ok && from == trace.GoRunnable {
					tl.waits = append(tl.waits, span{g: g, start: since(t), end: since(ev.Time())})
				}
				delete(runnable, g)
				running[g] = ev.Time()
			}
			if from == trace.GoRunning {
				if t, ok := running[g]; ok {
					tl.runs = append(tl.runs, span{g: g, start: since(t), end: since(ev.Time()), what: stoppedAt(ev.Stack())})
				}
				delete(running, g)
			}
		}
	}
	slices.SortFunc(tl.runs, func(a, b span) int { return int(a.start - b.start) })
	return tl, nil
}

// shortFunc drops the module paths the tables would repeat.
func shortFunc(f string) string {
	for _, p := range []string{"github.com/kvasir-serving/kvasir/", "github.com/valyala/"} {
		f = strings.TrimPrefix(f, p)
	}
	return f
}

// entryFunc is the outermost frame of s: the goroutine's entry function.
func entryFunc(s trace.Stack) string {
	var last string
	for f := range s.Frames() {
		last = f.Func
	}
	return shortFunc(last)
}

// stoppedAt names where a run stopped: its innermost frames outside the
// runtime, innermost first.
func stoppedAt(s trace.Stack) string {
	var out []string
	for f := range s.Frames() {
		if strings.HasPrefix(f.Func, "runtime.") || strings.HasPrefix(f.Func, "internal/") || strings.HasPrefix(f.Func, "syscall.") {
			continue
		}
		if out = append(out, shortFunc(f.Func)); len(out) == 6 {
			break
		}
	}
	return strings.Join(out, " < ")
}

type waitOpts struct {
	long    time.Duration
	steady  bool
	request func(entry string) bool // a request goroutine, by its entry function
}

// waitReport is what analyzeWaits found.
type waitReport struct {
	opts                waitOpts
	length              time.Duration
	requestWaits        []float64     // µs, sorted
	requestRuns         []float64     // µs, sorted
	left                int           // request waits left out as bursts
	long                int           // request waits over opts.long
	longTotal, overlaps time.Duration // their total, and the part of it other goroutines ran
	blame               []blame       // what ran during them, most first
}

// blame is one kind of run (or runtime range) during long waits.
type blame struct {
	what  string
	total time.Duration // of the long waits' time
	waits int           // long waits it ran in
}

// analyzeWaits sums up the request goroutines' waits and what ran during
// the long ones.
func analyzeWaits(tl *timeline, o waitOpts) waitReport {
	r := waitReport{opts: o, length: tl.length}
	isReq := func(g trace.GoID) bool { return o.request(tl.entry[g]) }
	bin := func(t time.Duration) int { return int(t / (100 * time.Millisecond)) }
	burst := map[int]bool{}
	if o.steady {
		all, long := map[int]int{}, map[int]int{}
		for _, w := range tl.waits {
			if isReq(w.g) {
				all[bin(w.start)]++
				if w.len() > o.long {
					long[bin(w.start)]++
				}
			}
		}
		for b, n := range long {
			if n*10 > all[b] {
				burst[b-1], burst[b], burst[b+1] = true, true, true
			}
		}
	}
	byWhat := map[string]*blame{}
	add := func(what string, d time.Duration, seen map[string]bool) {
		b := byWhat[what]
		if b == nil {
			b = &blame{what: what}
			byWhat[what] = b
		}
		b.total += d
		if !seen[what] {
			b.waits++
			seen[what] = true
		}
	}
	for _, w := range tl.waits {
		if !isReq(w.g) {
			continue
		}
		if burst[bin(w.start)] {
			r.left++
			continue
		}
		r.requestWaits = append(r.requestWaits, micros(w.len()))
		if w.len() <= o.long {
			continue
		}
		r.long++
		r.longTotal += w.len()
		seen := map[string]bool{}
		covered := w.start // the union of other runs, swept in start order
		// Runs are sorted by start; one that began up to a second earlier
		// may still be running (a run longer than that is not counted).
		i, _ := slices.BinarySearchFunc(tl.runs, w.start-time.Second, func(s span, t time.Duration) int { return int(s.start - t) })
		for ; i < len(tl.runs) && tl.runs[i].start < w.end; i++ {
			run := tl.runs[i]
			if run.end <= w.start || run.g == w.g {
				continue
			}
			add(tl.entry[run.g]+" :: "+run.what, min(run.end, w.end)-max(run.start, w.start), seen)
			if s, e := max(run.start, covered), min(run.end, w.end); e > s {
				r.overlaps += e - s
				covered = e
			}
		}
		for _, rg := range tl.ranges {
			if rg.end > w.start && rg.start < w.end {
				add("runtime range: "+rg.what, min(rg.end, w.end)-max(rg.start, w.start), seen)
			}
		}
	}
	for _, run := range tl.runs {
		if isReq(run.g) && !burst[bin(run.start)] {
			r.requestRuns = append(r.requestRuns, micros(run.len()))
		}
	}
	slices.Sort(r.requestWaits)
	slices.Sort(r.requestRuns)
	for _, b := range byWhat {
		r.blame = append(r.blame, *b)
	}
	slices.SortFunc(r.blame, func(a, b blame) int {
		if a.total != b.total {
			return int(b.total - a.total)
		}
		return strings.Compare(a.what, b.what)
	})
	return r
}

func micros(d time.Duration) float64 { return float64(d) / 1e3 }

func (r waitReport) print(w io.Writer, top int) {
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f", micros(d)) }
	pc := func(sorted []float64, p float64) string { return fmt.Sprintf("%.1f", bench.Percentile(sorted, p)) }
	fmt.Fprintf(w, "trace of %.1f s; request goroutines' waits for a P (runnable -> running): %d", r.length.Seconds(), len(r.requestWaits))
	if r.opts.steady {
		fmt.Fprintf(w, " (%d more left out as bursts)", r.left)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "\n| | p50 (µs) | p90 | p99 | p99.9 | max |\n| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, row := range []struct {
		name string
		d    []float64
	}{{"wait for a P", r.requestWaits}, {"run, once on it", r.requestRuns}} {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", row.name, pc(row.d, 50), pc(row.d, 90),
			pc(row.d, 99), pc(row.d, 99.9), pc(row.d, 100))
	}
	if r.long == 0 {
		fmt.Fprintf(w, "\nno wait over %v\n", r.opts.long)
		return
	}
	fmt.Fprintf(w, "\n%d waits over %v (%.2f%%), %.1f ms in all; other goroutines ran during %.1f%% of it. What ran:\n\n",
		r.long, r.opts.long, 100*float64(r.long)/float64(len(r.requestWaits)), float64(r.longTotal)/1e6,
		100*float64(r.overlaps)/float64(r.longTotal))
	fmt.Fprintln(w, "| ran (entry :: where the run stopped) | µs of the waits | in waits |\n| --- | ---: | ---: |")
	for i, b := range r.blame {
		if i == top {
			break
		}
		fmt.Fprintf(w, "| %s | %s | %d |\n", b.what, us(b.total), b.waits)
	}
}
