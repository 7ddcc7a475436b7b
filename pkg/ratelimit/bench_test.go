package ratelimit

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/testing/redistest"
)

// BenchmarkReserveSettle measures one request's Reserve and Settle, every
// limit set, and reports the median (p50-ns) beside the mean.
func BenchmarkReserveSettle(b *testing.B) {
	lim := Limits{
		RequestsPerMinute: 1 << 40, TokensPerMinute: 1 << 40, InputTokensPerMinute: 1 << 40,
		OutputTokensPerMinute: 1 << 40, MaxConcurrentRequests: 1 << 20,
	}
	cost := Cost{Requests: 1, InputTokens: 100, OutputTokens: 256}
	use := Usage{InputTokens: 100, OutputTokens: 120}
	backends := []struct {
		name string
		new  func(b *testing.B) Backend
	}{
		{name: "memory", new: func(*testing.B) Backend { return NewMemory(nil) }},
		{name: "redis", new: func(b *testing.B) Backend {
			return NewRedis(newRedisClient(b, redistest.Start(b).Addr), RedisConfig{})
		}},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			l := mustNew(b, Config{Backend: be.new(b)})
			ctx := context.Background()
			samples := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				d, err := l.Reserve(ctx, key, lim, cost)
				if err != nil || !d.Allowed || d.Unavailable {
					b.Fatalf("Reserve: %v %+v", err, d)
				}
				if err := l.Settle(ctx, d.Reservation, use); err != nil {
					b.Fatal(err)
				}
				samples = append(samples, time.Since(start))
			}
			slices.Sort(samples)
			b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "p50-ns")
		})
	}
}
