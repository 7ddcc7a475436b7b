package queueproxy

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/upstream"
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

// errGone is returned by acquireWatch when the waiter's client went away.
var errGone = errors.New("client gone")

// errWaitTimeout is returned by acquireWatch when the deadline passed.
var errWaitTimeout = errors.New("timed out waiting for a slot")

// acquireWatch is acquire for a request served without a context (by
// fasthttp): it waits until deadline (errWaitTimeout), and asks w every
// interval whether the client went away (errGone). The checks run on the
// waiting goroutine, with one timer for the whole wait, and only when the
// request has to queue.
func (l *limiter) acquireWatch(deadline time.Time, interval time.Duration, w upstream.Watcher) error {
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
	wt := &waiter{ready: make(chan struct{})}
	e := l.waiters.PushBack(wt)
	l.mu.Unlock()

	t := time.NewTimer(min(interval, time.Until(deadline)))
	defer t.Stop()
	for {
		select {
		case <-wt.ready:
			return nil
		case <-t.C:
		}
		var err error
		switch left := time.Until(deadline); {
		case left <= 0:
			err = errWaitTimeout
		case w.Gone():
			err = errGone
		default:
			t.Reset(min(interval, left))
			continue
		}
		l.mu.Lock()
		granted := wt.granted
		if !granted {
			l.waiters.Remove(e)
		}
		l.mu.Unlock()
		if granted { // the slot arrived as we gave up: pass it on
			l.release()
		}
		return err
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
