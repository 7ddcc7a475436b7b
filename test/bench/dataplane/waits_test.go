package main

import (
	"bytes"
	"runtime/trace"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	xtrace "golang.org/x/exp/trace"
)

const ms = time.Millisecond

// Two request goroutines and a background one: request 2 waits 2 ms while
// request 1 and the background goroutine hold the P; request 1's waits are
// short. One GC phase overlaps request 2's wait.
func TestAnalyzeWaitsBlamesWhatRanDuringALongWait(t *testing.T) {
	tl := &timeline{
		length: time.Second,
		entry:  map[xtrace.GoID]string{1: "fasthttp.(*workerPool).getCh.func1", 2: "fasthttp.(*workerPool).getCh.func1", 3: "queueproxy.every"},
		runs: []span{
			{g: 1, start: 10 * ms, end: 11*ms + 500*time.Microsecond, what: "serve"},
			{g: 3, start: 11*ms + 500*time.Microsecond, end: 12 * ms, what: "scrape"},
			{g: 2, start: 12 * ms, end: 12*ms + 50*time.Microsecond, what: "serve"},
		},
		waits: []span{
			{g: 1, start: 10 * ms, end: 10*ms + 5*time.Microsecond},
			{g: 2, start: 10 * ms, end: 12 * ms},
			{g: 1, start: 20 * ms, end: 20*ms + 10*time.Microsecond},
			{g: 3, start: 30 * ms, end: 35 * ms}, // not a request goroutine
		},
		ranges: []span{{start: 11 * ms, end: 13 * ms, what: "GC concurrent mark phase"}},
	}
	r := analyzeWaits(tl, waitOpts{long: 300 * time.Microsecond, request: func(e string) bool { return strings.HasPrefix(e, "fasthttp.") }})
	assert.Len(t, r.requestWaits, 3, "the background goroutine's wait is not a request's")
	assert.Equal(t, 1, r.long)
	assert.Equal(t, 2*ms, r.longTotal)
	assert.Equal(t, 2*ms, r.overlaps, "request 1 then the scrape held the P the whole wait")
	require.Len(t, r.blame, 3)
	assert.Equal(t, blame{what: "fasthttp.(*workerPool).getCh.func1 :: serve", total: 1500 * time.Microsecond, waits: 1}, r.blame[0])
	assert.Equal(t, blame{what: "runtime range: GC concurrent mark phase", total: 1 * ms, waits: 1}, r.blame[1])
	assert.Equal(t, blame{what: "queueproxy.every :: scrape", total: 500 * time.Microsecond, waits: 1}, r.blame[2])
	assert.Len(t, r.requestRuns, 2)

	var out bytes.Buffer
	r.print(&out, 10)
	assert.Contains(t, out.String(), "1 waits over 300µs")
	assert.Contains(t, out.String(), "| queueproxy.every :: scrape | 500.0 | 1 |")
}

// A burst (more than a tenth of a 100 ms stretch's waits long; here all)
// is left out with its neighbours when steady is set.
func TestAnalyzeWaitsLeavesOutBursts(t *testing.T) {
	tl := &timeline{length: time.Second, entry: map[xtrace.GoID]string{1: "req"}}
	for i := range 20 {
		at := 500*ms + time.Duration(i)*ms
		tl.waits = append(tl.waits, span{g: 1, start: at, end: at + ms})
	}
	tl.waits = append(tl.waits, span{g: 1, start: 900 * ms, end: 900*ms + ms}, span{g: 1, start: 610 * ms, end: 610*ms + time.Microsecond})
	for i := range 20 { // the lone long wait's 100 ms are otherwise quiet
		at := 901*ms + time.Duration(i)*ms
		tl.waits = append(tl.waits, span{g: 1, start: at, end: at + time.Microsecond})
	}
	req := func(e string) bool { return e == "req" }
	all := analyzeWaits(tl, waitOpts{long: 300 * time.Microsecond, request: req})
	assert.Equal(t, 21, all.long)
	steady := analyzeWaits(tl, waitOpts{long: 300 * time.Microsecond, steady: true, request: req})
	assert.Equal(t, 1, steady.long, "only the lone long wait at 900 ms is kept")
	assert.Equal(t, 21, steady.left, "the burst and the short wait 100 ms after it")
}

// readTimeline reads a real trace: goroutines get their entry functions,
// and a goroutine woken while another holds the one P has a wait.
func TestReadTimelineOfARealTrace(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, trace.Start(&buf))
	var wg sync.WaitGroup
	ch := make(chan struct{})
	wg.Go(func() { tracedReceiver(ch) })
	for range 100 {
		ch <- struct{}{}
	}
	close(ch)
	wg.Wait()
	trace.Stop()

	tl, err := readTimeline(&buf)
	require.NoError(t, err)
	var entries []string
	for _, e := range tl.entry {
		entries = append(entries, e)
	}
	assert.Contains(t, strings.Join(entries, "\n"), "sync.(*WaitGroup).Go.func1")
	assert.NotEmpty(t, tl.runs)
	assert.NotEmpty(t, tl.waits, "the receiver was made runnable by the sends")
	for i := 1; i < len(tl.runs); i++ {
		require.LessOrEqual(t, tl.runs[i-1].start, tl.runs[i].start, "runs sorted by start")
	}
	for _, w := range tl.waits {
		require.LessOrEqual(t, w.start, w.end)
	}
}

//go:noinline
func tracedReceiver(ch <-chan struct{}) {
	for range ch {
	}
}
