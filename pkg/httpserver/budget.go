package httpserver

import "sync/atomic"

// Budget is a number of bytes shared by concurrent holders: request bodies
// take from it while they are held in memory and give back when done. It is
// safe for concurrent use.
type Budget struct {
	limit int64
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget { return &Budget{limit: limit} }

// TryAcquire takes n bytes if they fit, and reports whether they did.
func (b *Budget) TryAcquire(n int64) bool {
	for {
		used := b.used.Load()
		if used+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

// Release gives back n bytes taken with TryAcquire.
func (b *Budget) Release(n int64) { b.used.Add(-n) }

// Used returns the bytes held now.
func (b *Budget) Used() int64 { return b.used.Load() }

// Limit returns the budget's size.
func (b *Budget) Limit() int64 { return b.limit }
