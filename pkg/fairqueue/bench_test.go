package fairqueue

import (
	"fmt"
	"testing"
)

// BenchmarkPushPop pushes one item and releases one, with that many
// tenants backlogged (two items each), charging the estimate at release
// and settling it.
func BenchmarkPushPop(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint("tenants=", n), func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.MaxWaiting = 0
			q := New[int](cfg)
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprint("tenant-", i)
			}
			req := func(i int) Request[int] {
				return Request[int]{Tenant: names[i%n], Class: Class(i % NumClasses), Weight: 1 + i%3,
					InputTokens: int64(100 + i%400), OutputTokens: 256, Arrival: at(i / 100), Value: i}
			}
			for i := range 2 * n {
				if _, _, err := q.Push(req(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, _, err := q.Push(req(2*n + i)); err != nil {
					b.Fatal(err)
				}
				e, ok := q.Pop(at((2*n + i) / 100))
				if !ok {
					b.Fatal("empty")
				}
				q.Settle(e, 120, 200)
			}
		})
	}
}

// BenchmarkPushPopParallel is BenchmarkPushPop with 1,000 tenants from
// every CPU at once: the cost of the one lock under contention.
func BenchmarkPushPopParallel(b *testing.B) {
	const n = 1000
	q := New[int](Config{ChargeOnRelease: true})
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprint("tenant-", i)
		for range 2 {
			if _, _, err := q.Push(Request[int]{Tenant: names[i], Class: Standard, InputTokens: 100, Arrival: t0}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, _, err := q.Push(Request[int]{Tenant: names[i%n], Class: Standard, InputTokens: 100, Arrival: t0}); err != nil {
				b.Error(err)
				return
			}
			if e, ok := q.Pop(t0); ok {
				q.Settle(e, 100, 10)
			}
		}
	})
}
