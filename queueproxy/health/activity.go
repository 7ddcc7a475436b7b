package health

import (
	"context"
	"sync"
)

// activity counts running handlers and tells when none are left. The
// channel a waiter waits on is made only when someone waits, so that
// entering and leaving allocate nothing.
type activity struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while nobody waits
}

func (a *activity) enter() {
	a.mu.Lock()
	a.n++
	a.mu.Unlock()
}

func (a *activity) leave() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n--; a.n == 0 && a.idle != nil {
		close(a.idle)
		a.idle = nil
	}
}

// wait returns when no handler runs, or ctx's error when it ends first.
func (a *activity) wait(ctx context.Context) error {
	a.mu.Lock()
	if a.n == 0 {
		a.mu.Unlock()
		return nil
	}
	if a.idle == nil {
		a.idle = make(chan struct{})
	}
	idle := a.idle
	a.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
