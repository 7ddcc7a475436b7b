package local

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// The decider's observation: demand from the activators, queues and KV
// usage from the pods' reports, tokens per second from the growth of their
// cumulative counters.
func TestScalerSignals(t *testing.T) {
	t0 := time.Unix(1000, 0)
	st := &scaleTarget{}
	pods := func(a, b uint64) []*stats.Stat {
		return []*stats.Stat{
			{Pod: "a", PromptTokens: a, Engine: stats.EngineStat{Waiting: 2, KVCacheUsage: 0.5}},
			{Pod: "b", CompletionTokens: b, Engine: stats.EngineStat{Waiting: 1, KVCacheUsage: 0.7}},
		}
	}
	s := st.signals(activator.Load{InFlight: 5, Buffered: 3}, pods(100, 50), t0)
	require.Equal(t, 8.0, s.Concurrency)
	require.Equal(t, 3.0, s.Buffered)
	require.Equal(t, 3.0, s.Waiting)
	require.InDelta(t, 0.6, s.KVCacheUsage, 1e-9)
	require.Zero(t, s.TokensPerSecond, "no rate before a second observation")

	s = st.signals(activator.Load{}, pods(400, 250), t0.Add(2*time.Second))
	require.Equal(t, 250.0, s.TokensPerSecond, "(300 + 200) tokens in 2 s")
}

// The scaler couples each disaggregated revision's prefill role to its
// decode role (the rules themselves are table-tested in pkg/autoscaler).
func TestScalerCouplesPrefillToDecode(t *testing.T) {
	pre := fleet.Key{Service: "s", Revision: "s-00001", Role: activator.RolePrefill}
	dec := fleet.Key{Service: "s", Revision: "s-00001", Role: activator.RoleDecode}
	d, err := autoscaler.NewDecider(autoscaler.Config{MaxScale: 3}, time.Now())
	require.NoError(t, err)
	s := &scaler{targets: map[fleet.Key]*scaleTarget{
		pre: {key: pre, decider: d, ratio: &autoscaler.Ratio{Min: 0.5}},
		dec: {key: dec},
	}}
	want := map[fleet.Key]autoscaler.Decision{pre: {Desired: 2}, dec: {Desired: 0}}
	s.couplePrefill(want)
	require.Equal(t, 0, want[pre].Desired, "to zero together")
	want = map[fleet.Key]autoscaler.Decision{pre: {Desired: 1}, dec: {Desired: 4}}
	s.couplePrefill(want)
	require.Equal(t, 2, want[pre].Desired, "within the ratio")
	want = map[fleet.Key]autoscaler.Decision{pre: {Desired: 1}, dec: {Desired: 10}}
	s.couplePrefill(want)
	require.Equal(t, 3, want[pre].Desired, "the prefill role's maxScale wins")
}
