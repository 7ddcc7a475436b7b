package local

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
)

func TestScalerDecide(t *testing.T) {
	t0 := time.Unix(1000, 0)
	base := scaleTarget{minScale: 0, maxScale: 4, targetConcurrency: 8, grace: 30 * time.Second, stableWindow: 60 * time.Second}
	for name, tc := range map[string]struct {
		desired int
		load    activator.Load
		now     time.Time
		want    int
	}{
		"one buffered request wakes zero":      {0, activator.Load{Buffered: 1, LastActive: t0}, t0, 1},
		"demand over target adds replicas":     {1, activator.Load{InFlight: 10, Buffered: 7, LastActive: t0}, t0, 3},
		"capped at maxScale":                   {1, activator.Load{Buffered: 1000, LastActive: t0}, t0, 4},
		"idle inside the grace period stays":   {1, activator.Load{LastActive: t0}, t0.Add(29 * time.Second), 1},
		"idle past the grace period goes to 0": {1, activator.Load{LastActive: t0}, t0.Add(30 * time.Second), 0},
		"in flight never goes to zero":         {1, activator.Load{InFlight: 1, LastActive: t0}, t0.Add(time.Hour), 1},
		"lower demand waits for stable window": {3, activator.Load{InFlight: 8, LastActive: t0}, t0, 3},
		"minScale holds when idle past grace":  {2, activator.Load{LastActive: t0}, t0.Add(time.Hour), 2},
	} {
		t.Run(name, func(t *testing.T) {
			st := base
			if name == "minScale holds when idle past grace" {
				st.minScale = 2
			}
			st.desired = tc.desired
			require.Equal(t, tc.want, st.decide(tc.load, tc.now))
		})
	}
}

func TestScalerStepsDownAfterStableWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	st := scaleTarget{maxScale: 10, targetConcurrency: 8, grace: time.Hour, stableWindow: time.Minute, desired: 4}
	load := activator.Load{InFlight: 8, LastActive: t0}
	require.Equal(t, 4, st.decide(load, t0))
	require.Equal(t, 4, st.decide(load, t0.Add(59*time.Second)))
	require.Equal(t, 1, st.decide(load, t0.Add(60*time.Second)))
}
