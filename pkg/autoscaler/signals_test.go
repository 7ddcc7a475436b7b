package autoscaler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// The decider's observation: demand from the activators, queues and KV
// usage from the pods' reports, tokens per second from the growth of their
// cumulative counters.
func TestObserve(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var r TokenRate
	pods := func(a, b uint64) []*stats.Stat {
		return []*stats.Stat{
			{Pod: "a", PromptTokens: a, Engine: stats.EngineStat{Waiting: 2, KVCacheUsage: 0.5}},
			{Pod: "b", CompletionTokens: b, Engine: stats.EngineStat{Waiting: 1, KVCacheUsage: 0.7}},
		}
	}
	s := r.Observe(5, 3, pods(100, 50), t0)
	require.Equal(t, 8.0, s.Concurrency)
	require.Equal(t, 3.0, s.Buffered)
	require.Equal(t, 3.0, s.Waiting)
	require.InDelta(t, 0.6, s.KVCacheUsage, 1e-9)
	require.Zero(t, s.TokensPerSecond, "no rate before a second observation")

	s = r.Observe(0, 0, pods(400, 250), t0.Add(2*time.Second))
	require.Equal(t, 250.0, s.TokensPerSecond, "(300 + 200) tokens in 2 s")
}
