package activator

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// Errors of Acquire.
var (
	ErrBufferFull    = errors.New("too many requests are buffered for this revision")
	ErrBufferTimeout = errors.New("no replica became ready in time")
)

// endpoint is a ready replica with the activator's view of its load.
type endpoint struct {
	fleet.Endpoint
	inFlight int
}

// waiter is a buffered request.
type waiter struct {
	exclude map[string]bool
	ch      chan *endpoint // receives the assigned endpoint (buffered, cap 1)
}

// revision holds the ready endpoints of one replica set and the requests
// buffered for it. Endpoints are handed to waiters FIFO the moment one is
// eligible: when endpoints appear and when a request finishes.
type revision struct {
	key      fleet.Key
	capacity int // per-endpoint in-flight limit; 0 = unlimited
	picker   Picker
	onDemand func(fleet.Key)

	mu         sync.Mutex
	endpoints  []*endpoint
	waiters    []*waiter
	inFlight   int
	lastActive time.Time
}

func newRevision(key fleet.Key, capacity int, picker Picker, onDemand func(fleet.Key)) *revision {
	return &revision{key: key, capacity: capacity, picker: picker, onDemand: onDemand, lastActive: time.Now()}
}

// Load is what the scaler reads of a revision.
type Load struct {
	InFlight   int       // requests forwarded and not finished
	Buffered   int       // requests waiting for a replica
	Ready      int       // ready endpoints
	LastActive time.Time // last time a request arrived or finished
}

func (r *revision) load() Load {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Load{InFlight: r.inFlight, Buffered: len(r.waiters), Ready: len(r.endpoints), LastActive: r.lastActive}
}

func (r *revision) setCapacity(c int) {
	r.mu.Lock()
	r.capacity = c
	r.handOffLocked()
	r.mu.Unlock()
}

// setEndpoints replaces the ready set, keeping in-flight counts of endpoints
// that stay, and hands new capacity to buffered requests. It returns the
// addresses of the endpoints that left.
func (r *revision) setEndpoints(eps []fleet.Endpoint) (gone []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := make(map[string]*endpoint, len(r.endpoints))
	for _, e := range r.endpoints {
		old[e.Name] = e
	}
	next := make([]*endpoint, 0, len(eps))
	for _, e := range eps {
		if cur, ok := old[e.Name]; ok && cur.Address == e.Address {
			cur.Endpoint = e
			next = append(next, cur)
			delete(old, e.Name)
			continue
		}
		next = append(next, &endpoint{Endpoint: e})
	}
	for _, e := range old {
		gone = append(gone, e.Address)
	}
	r.endpoints = next
	r.handOffLocked()
	return gone
}

// eligibleLocked returns the endpoints a request may be sent to now.
func (r *revision) eligibleLocked(exclude map[string]bool, buf []*endpoint) []*endpoint {
	for _, e := range r.endpoints {
		if exclude[e.Name] || (r.capacity > 0 && e.inFlight >= r.capacity) {
			continue
		}
		buf = append(buf, e)
	}
	return buf
}

func (r *revision) takeLocked(exclude map[string]bool) *endpoint {
	var buf [16]*endpoint
	cands := r.eligibleLocked(exclude, buf[:0])
	if len(cands) == 0 {
		return nil
	}
	e := r.picker.Pick(cands)
	e.inFlight++
	r.inFlight++
	return e
}

func (r *revision) handOffLocked() {
	for len(r.waiters) > 0 {
		w := r.waiters[0]
		e := r.takeLocked(w.exclude)
		if e == nil {
			// The head may be waiting for an endpoint it has not tried; let a
			// later waiter with no exclusions go ahead rather than stall.
			if !r.handOffOthersLocked() {
				return
			}
			continue
		}
		w.ch <- e
		r.waiters = r.waiters[1:]
	}
}

// handOffOthersLocked serves the first waiter after the head that can be
// served; it reports whether it served one.
func (r *revision) handOffOthersLocked() bool {
	for i := 1; i < len(r.waiters); i++ {
		w := r.waiters[i]
		if e := r.takeLocked(w.exclude); e != nil {
			w.ch <- e
			r.waiters = append(r.waiters[:i], r.waiters[i+1:]...)
			return true
		}
	}
	return false
}

// acquire returns an endpoint for one request, buffering up to timeout when
// none is eligible. The returned release must be called when the request ends.
func (r *revision) acquire(ctx context.Context, exclude map[string]bool, maxBuffered int, timeout time.Duration) (*endpoint, error) {
	r.mu.Lock()
	r.lastActive = time.Now()
	if len(r.waiters) == 0 {
		if e := r.takeLocked(exclude); e != nil {
			r.mu.Unlock()
			return e, nil
		}
	}
	if len(r.waiters) >= maxBuffered {
		r.mu.Unlock()
		return nil, ErrBufferFull
	}
	w := &waiter{exclude: exclude, ch: make(chan *endpoint, 1)}
	r.waiters = append(r.waiters, w)
	r.handOffLocked()
	r.mu.Unlock()
	if r.onDemand != nil && len(w.ch) == 0 {
		r.onDemand(r.key)
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var err error
	select {
	case e := <-w.ch:
		return e, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = ErrBufferTimeout
	}
	r.mu.Lock()
	for i, x := range r.waiters {
		if x == w {
			r.waiters = append(r.waiters[:i], r.waiters[i+1:]...)
			r.mu.Unlock()
			return nil, err
		}
	}
	r.mu.Unlock()
	// Assigned concurrently with the timeout: give the endpoint back.
	r.release(<-w.ch)
	return nil, err
}

func (r *revision) release(e *endpoint) {
	r.mu.Lock()
	e.inFlight--
	r.inFlight--
	r.lastActive = time.Now()
	r.handOffLocked()
	r.mu.Unlock()
}
