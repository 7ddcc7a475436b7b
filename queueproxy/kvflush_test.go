package queueproxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeKVSource counts flushes and hands them to the test.
type fakeKVSource struct {
	deltas  kvDeltas
	flushes chan int // the number of changes each flush sent
	mu      sync.Mutex
	pending int
}

func newFakeKVSource() *fakeKVSource {
	return &fakeKVSource{deltas: newKVDeltas("p"), flushes: make(chan int, 16)}
}

func (f *fakeKVSource) change(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range n {
		f.deltas.note(uint64(f.pending+i+1), false)
	}
	f.pending += n
}

func (f *fakeKVSource) flush() {
	f.mu.Lock()
	n := f.pending
	f.pending = 0
	f.deltas.order = f.deltas.order[:0]
	clear(f.deltas.batch)
	f.mu.Unlock()
	f.flushes <- n
}

func (f *fakeKVSource) changed() <-chan struct{} { return f.deltas.changed }
func (f *fakeKVSource) subscribe(*hub, func(), []byte) *subscriber {
	panic("not used")
}
func (f *fakeKVSource) len() int { return 0 }

// Changes wait for the end of a period (an hour here): none is sent before
// the flusher stops.
func TestFlushKVBatchesForAPeriod(t *testing.T) {
	src := newFakeKVSource()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); flushKV(ctx, time.Hour, src) }()
	src.change(2)
	// The flusher has taken the change's token: a flusher that sent the
	// first change at once would send it before it looks at ctx again.
	require.Eventually(t, func() bool { return len(src.deltas.changed) == 0 }, waitFor, tick)
	src.change(1)
	cancel()
	<-done
	select {
	case n := <-src.flushes:
		t.Fatalf("a flush of %d changes went out within the period", n)
	default:
	}
}

func TestFlushKVSendsEveryChangeEventually(t *testing.T) {
	src := newFakeKVSource()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go flushKV(ctx, time.Millisecond, src)
	total := 0
	for range 5 {
		src.change(2)
		total += <-src.flushes
	}
	assert.Equal(t, 10, total)
}

func TestKVDeltasWakeOncePerBatch(t *testing.T) {
	d := newKVDeltas("p")
	select {
	case <-d.changed:
		t.Fatal("a new set woke the flusher")
	default:
	}
	d.note(1, false)
	d.note(2, false)
	d.note(1, true)
	<-d.changed
	select {
	case <-d.changed:
		t.Fatal("one batch woke the flusher twice")
	default:
	}
	d.metaChanged()
	<-d.changed
	d.clear()
	<-d.changed
}
