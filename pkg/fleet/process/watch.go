package process

import (
	"sync"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// watch is one Watch of a replica set. The runtime posts the set's ready
// endpoints to it under the runtime's lock; a goroutine the runtime owns,
// one per watch, hands them to fn outside every runtime lock.
//
// A post replaces the set not yet handed over, so fn always gets the newest
// set: a late update can never overwrite a newer one (posts happen under
// the runtime's lock, in the order of the changes), and a slow fn skips
// intermediate sets rather than falling behind.
type watch struct {
	fn   func([]fleet.Endpoint)
	kick chan struct{} // capacity 1: a set is pending
	done chan struct{} // closed by stop

	mu      sync.Mutex // guards the mailbox; never held while fn runs
	pending []fleet.Endpoint
	posted  bool // pending is not handed over yet

	callMu  sync.Mutex // held while fn runs, so that stop waits for a call
	stopped bool       // guarded by callMu
}

func newWatch(fn func([]fleet.Endpoint)) *watch {
	return &watch{fn: fn, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// post makes eps the set the next call hands to fn. It never blocks.
func (w *watch) post(eps []fleet.Endpoint) {
	w.mu.Lock()
	w.pending, w.posted = eps, true
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default: // a kick is pending already; it delivers the newest set
	}
}

// run hands posted sets to fn until the watch stops, or until closed is
// closed (the runtime posts nothing after that) and the last set has been
// handed over.
func (w *watch) run(closed <-chan struct{}) {
	for {
		select {
		case <-w.kick:
			w.deliver()
		case <-w.done:
			return
		case <-closed:
			w.deliver()
			return
		}
	}
}

// deliver hands the pending set, if any, to fn, unless the watch stopped.
func (w *watch) deliver() {
	w.callMu.Lock()
	defer w.callMu.Unlock()
	if w.stopped {
		return
	}
	w.mu.Lock()
	eps, ok := w.pending, w.posted
	w.pending, w.posted = nil, false
	w.mu.Unlock()
	if ok {
		w.fn(eps)
	}
}

// stop ends the watch: it waits for a call of fn under way, and no call
// starts after it returns. It must not be called from fn itself.
func (w *watch) stop() {
	w.callMu.Lock()
	defer w.callMu.Unlock()
	if !w.stopped {
		w.stopped = true
		close(w.done)
	}
}
