package upstream

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultWatchInterval is how often a Watchdog asks its waits' Watchers
// when its interval is not set (the zero Watchdog, NewPool's own).
const DefaultWatchInterval = 100 * time.Millisecond

// Watchdog asks the Watchers of the Waits in progress whether their callers
// left, every interval once a Wait waited one, and closes the connection of
// a Wait whose caller did (Wait then returns ErrCallerGone). One goroutine
// does it for every Wait of the pools that share the Watchdog, and only
// while some Wait waits. A Wait itself sleeps in the poller until its
// upstream sends, its deadline passes, or the watchdog closes its
// connection: 2,000 streams waiting for their next token cost no wake-up
// and no allocation each per interval, as a wait that looked at its caller
// itself (a read deadline per interval, and the error package net makes for
// each) did. Other waits (a request in a queue) may be watched too (Start
// with no connection). The zero Watchdog is ready and asks every
// DefaultWatchInterval.
type Watchdog struct {
	interval time.Duration
	sweeps   atomic.Uint64 // sweeps started

	mu      sync.Mutex
	head    *Watch // the Watches started and not stopped, linked through next
	running bool
	scratch []*Watch // the sweep's snapshot; only the goroutine uses it
}

// NewWatchdog returns a Watchdog that asks every interval (at least a
// millisecond).
func NewWatchdog(interval time.Duration) *Watchdog {
	return &Watchdog{interval: max(interval, time.Millisecond)}
}

// Watch is one wait under a Watchdog's eye, from Start to Stop. Its zero
// value is ready, and it may be started again once stopped. A Conn has one
// (a Conn waits once at a time), so watching allocates nothing.
type Watch struct {
	// mu is held while the watchdog asks w, so that Stop waits for a
	// question in progress: once Wait returned, its Watcher may be
	// reused (the queue-proxy pools them). Gone is a non-blocking look
	// at a socket, and only this watch's own Start and Stop contend.
	mu    sync.Mutex
	w     Watcher
	nc    net.Conn // the connection to close when w's caller left (nil: none)
	state watchState
	since uint64 // the watchdog's sweeps when the wait began

	// prev and next link the watchdog's started Watches (guarded by the
	// Watchdog's mu): a list, not a set, since a map's insert and delete
	// cost about 2 µs a request in the queue-proxy's perf profile.
	prev, next *Watch
	listed     bool
}

type watchState uint8

const (
	watchIdle watchState = iota
	watchWaiting
	watchGone // w said gone; the connection is closed
)

// Start puts x, a wait for w's caller (on nc, when not nil), under the
// watchdog's eye: once x waited an interval, w is asked every interval
// whether its caller left, and when it did, nc is closed and w is not
// asked again. x must not be started again before Stop.
func (d *Watchdog) Start(x *Watch, w Watcher, nc net.Conn) {
	since := d.sweeps.Load()
	x.mu.Lock()
	x.w, x.nc, x.state, x.since = w, nc, watchWaiting, since
	x.mu.Unlock()
	d.mu.Lock()
	if !x.listed {
		x.prev, x.next, x.listed = nil, d.head, true
		if d.head != nil {
			d.head.prev = x
		}
		d.head = x
	}
	if !d.running {
		d.running = true
		go d.run()
	}
	d.mu.Unlock()
}

// Stop takes x from the watchdog's eye, after a question in progress; it
// reports whether x's Watcher said its caller left (and the connection, if
// any, was closed for it). After Stop, x's Watcher is not asked again.
func (d *Watchdog) Stop(x *Watch) (gone bool) {
	d.mu.Lock()
	if x.listed {
		if x.prev != nil {
			x.prev.next = x.next
		} else {
			d.head = x.next
		}
		if x.next != nil {
			x.next.prev = x.prev
		}
		x.prev, x.next, x.listed = nil, nil, false
	}
	d.mu.Unlock()
	x.mu.Lock()
	gone = x.state == watchGone
	x.w, x.nc, x.state = nil, nil, watchIdle
	x.mu.Unlock()
	return gone
}

func (d *Watchdog) run() {
	interval := d.interval
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for range t.C {
		// A wait is asked about once it waited a whole interval: one
		// that began before the previous sweep. The many shorter ones (a
		// stream's wait for its next token) cost no look at a socket.
		n := d.sweeps.Add(1)
		d.mu.Lock()
		if d.head == nil {
			d.running = false
			d.mu.Unlock()
			return
		}
		d.scratch = d.scratch[:0]
		for x := d.head; x != nil; x = x.next {
			d.scratch = append(d.scratch, x)
		}
		d.mu.Unlock()
		for i, x := range d.scratch {
			d.scratch[i] = nil
			var nc net.Conn
			x.mu.Lock()
			if x.state == watchWaiting && x.since+1 < n && x.w.Gone() {
				x.state, nc = watchGone, x.nc
			}
			x.mu.Unlock()
			if nc != nil {
				// The Wait's end sees watchGone and its caller closes
				// the connection: it never goes back to the pool, so
				// this close cannot hit another request's.
				_ = nc.Close()
			}
		}
	}
}
