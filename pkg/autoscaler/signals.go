package autoscaler

import (
	"time"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// TokenRate turns the queue-proxies' cumulative token counters into a
// rate between observations. The zero value is ready.
type TokenRate struct {
	tokens map[string]uint64 // per pod at the last observation
	last   time.Time
}

// Observe builds one observation of a replica set: demand from the
// activators (inFlight, buffered), waiting queues and mean KV-cache usage
// from the pods' last reports, and tokens per second from the growth of
// their counters since the previous call.
func (r *TokenRate) Observe(inFlight, buffered int, pods []*stats.Stat, now time.Time) Signals {
	s := Signals{Concurrency: float64(inFlight + buffered), Buffered: float64(buffered)}
	var kv float64
	var tokens uint64
	seen := make(map[string]uint64, len(pods))
	for _, p := range pods {
		s.Waiting += p.Engine.Waiting
		kv += p.Engine.KVCacheUsage
		total := p.PromptTokens + p.CompletionTokens
		if prev, ok := r.tokens[p.Pod]; ok && total >= prev {
			tokens += total - prev
		}
		seen[p.Pod] = total
	}
	if len(pods) > 0 {
		s.KVCacheUsage = kv / float64(len(pods))
	}
	if dt := now.Sub(r.last).Seconds(); !r.last.IsZero() && dt > 0 {
		s.TokensPerSecond = float64(tokens) / dt
	}
	r.tokens, r.last = seen, now
	return s
}
