package queueproxy

import (
	"container/list"
	"context"
	"errors"
	"sync"
)

// errQueueFull is returned by acquire when the limit is reached and the
// queue holds its maximum.
var errQueueFull = errors.New("queue full")

// limiter admits at most capacity holders at once; up to depth more wait in
// FIFO order. A waiter whose context ends leaves the queue.
type limiter struct {
	capacity int
	depth    int

	mu      sync.Mutex
	active  int
	waiters list.List // of *waiter, oldest first
}

type waiter struct {
	ready   chan struct{} // closed when the slot is handed over
	granted bool          // guarded by limiter.mu
}

func newLimiter(capacity, depth int) *limiter {
	return &limiter{capacity: capacity, depth: depth}
}

// acquire blocks until a slot is free, the queue is full (errQueueFull) or
// ctx ends (ctx.Err()). On success the caller must call release once.
func (l *limiter) acquire(ctx context.Context) error {
	l.mu.Lock()
	if l.active < l.capacity && l.waiters.Len() == 0 {
		l.active++
		l.mu.Unlock()
		return nil
	}
	if l.waiters.Len() >= l.depth {
		l.mu.Unlock()
		return errQueueFull
	}
	w := &waiter{ready: make(chan struct{})}
	e := l.waiters.PushBack(w)
	l.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		granted := w.granted
		if !granted {
			l.waiters.Remove(e)
		}
		l.mu.Unlock()
		if granted { // the slot arrived as we gave up: pass it on
			l.release()
		}
		return ctx.Err()
	}
}

// release frees a slot, handing it to the oldest waiter if any.
func (l *limiter) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.waiters.Front(); e != nil {
		w := l.waiters.Remove(e).(*waiter)
		w.granted = true
		close(w.ready)
		return
	}
	l.active--
}

// queued is the number of waiters.
func (l *limiter) queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiters.Len()
}
