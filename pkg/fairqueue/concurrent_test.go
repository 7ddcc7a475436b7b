package fairqueue

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConcurrent runs pushers (removing some of their own entries, as
// waiters whose context ends do) against poppers; run it under -race. Every
// pushed item ends exactly once: released, removed or evicted.
func TestConcurrent(t *testing.T) {
	const (
		pushers = 4
		poppers = 2
		each    = 2000
	)
	cfg := DefaultConfig()
	cfg.MaxWaiting = 64
	q := New[int](cfg)
	var (
		clock                                     atomic.Int64
		released, removed, evicted, refused, done atomic.Int64
		seen                                      sync.Map
		wg                                        sync.WaitGroup
	)
	end := func(v int) {
		_, dup := seen.LoadOrStore(v, true)
		assert.False(t, dup, "item %d ended twice", v)
	}
	for p := range pushers {
		wg.Go(func() {
			defer done.Add(1)
			for i := range each {
				v := p*each + i
				e, ev, err := q.Push(Request[int]{Tenant: fmt.Sprint("t", i%7), Class: Class(i % NumClasses), Weight: 1 + p,
					InputTokens: 10, OutputTokens: 10, Arrival: at(int(clock.Add(1))), Value: v})
				if ev != nil {
					evicted.Add(1)
					end(ev.Value())
				}
				if err != nil {
					refused.Add(1)
					continue
				}
				if i%5 == 0 && q.Remove(e) {
					removed.Add(1)
					end(v)
				}
			}
		})
	}
	for range poppers {
		wg.Go(func() {
			for {
				e, ok := q.Pop(at(int(clock.Load())))
				if !ok {
					if done.Load() == pushers && q.Stats().Waiting == 0 {
						return
					}
					runtime.Gosched()
					continue
				}
				assert.True(t, q.Settle(e, 10, 5))
				released.Add(1)
				end(e.Value())
			}
		})
	}
	wg.Wait()
	s := q.Stats()
	require.Zero(t, s.Waiting)
	require.Equal(t, int64(pushers*each), released.Load()+removed.Load()+evicted.Load()+refused.Load())
	require.Equal(t, Counts{
		Pushed: uint64(pushers*each - refused.Load()), Released: uint64(released.Load()), Aged: s.Counts.Aged,
		Evicted: uint64(evicted.Load()), Refused: uint64(refused.Load()), Removed: uint64(removed.Load()),
	}, s.Counts)
}
