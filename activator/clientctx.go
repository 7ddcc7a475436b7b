package activator

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// clientCtx is the context of an HTTP request served by fasthttp: it ends
// when the client leaves. fasthttp's server gives no such sign, so the
// activator's watchdog (upstream.Watchdog: one goroutine, running only
// while some request waits, the one that also watches the waits on
// replicas) looks at the connection of every request that waits on the
// context, every checkInterval, without consuming anything
// (httpserver.PeerClosed), and cancels those whose client left. A request
// waits on its context when something calls Done: a wait in the revision's
// queue for a replica (buffering at zero, fair queueing), the rate
// limiter's round trip to Redis. A request that never waits costs no
// channel and no registration; its wait on a replica's answer looks at the
// client itself (upstream.Conn.Wait with the call as Watcher).
type clientCtx struct {
	conn   net.Conn
	dog    *upstream.Watchdog
	tenant *tenant
	watch  upstream.Watch

	mu      sync.Mutex
	done    chan struct{}
	err     error
	watched bool
}

var (
	_ context.Context  = (*clientCtx)(nil)
	_ upstream.Watcher = (*clientCtx)(nil)
)

// Deadline reports none: requests have their own timeouts.
func (c *clientCtx) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done returns a channel closed when the client leaves; the first call
// puts the request under the watchdog's eye.
func (c *clientCtx) Done() <-chan struct{} {
	c.mu.Lock()
	if c.done != nil {
		d := c.done
		c.mu.Unlock()
		return d
	}
	c.done = make(chan struct{})
	d := c.done
	watch := c.err == nil
	if !watch {
		close(c.done)
	}
	c.watched = watch
	c.mu.Unlock()
	if watch {
		c.dog.Start(&c.watch, c, nil)
	}
	return d
}

// Gone reports whether the client left (upstream.Watcher), and ends the
// context when it did. c.conn is set before c is watched and never
// changes: a clientCtx is not reused.
func (c *clientCtx) Gone() bool {
	if !httpserver.PeerClosed(c.conn) {
		return false
	}
	c.cancel()
	return true
}

// Err is context.Canceled once the client left.
func (c *clientCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Value holds the request's tenant (tenantOf, TenantFrom).
func (c *clientCtx) Value(key any) any {
	if _, ok := key.(tenantKey); ok && c.tenant != nil {
		return c.tenant
	}
	return nil
}

// cancel ends the context: the client left.
func (c *clientCtx) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = context.Canceled
	if c.done != nil {
		close(c.done)
	}
}

// release takes the request from the watchdog's eye; call it when the
// request ends.
func (c *clientCtx) release() {
	c.mu.Lock()
	watched := c.watched
	c.watched = false
	c.mu.Unlock()
	if watched {
		c.dog.Stop(&c.watch)
	}
}
