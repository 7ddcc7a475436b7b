package autoscaler

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Unix(1_000_000, 0)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

func newDecider(t *testing.T, cfg Config) *Decider {
	t.Helper()
	d, err := NewDecider(cfg, t0)
	require.NoError(t, err)
	d.started = true // past the initial-scale decision, unless a test wants it
	return d
}

// feed records s once a second over [from, to).
func feed(d *Decider, from, to float64, s Signals) {
	for x := from; x < to; x++ {
		d.Record(at(x), s)
	}
}

func TestStableRecommendation(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, Targets: Targets{Concurrency: ptr(8.0)}})
	feed(d, 0, 60, Signals{Concurrency: 40})
	got := d.Decide(at(60), 5, 0, 40)
	require.Equal(t, 5, got.Desired)
	require.False(t, got.Panic)
	require.Equal(t, "concurrency", got.Reason)
}

func TestCPUAndMemoryTargets(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, Targets: Targets{CPU: ptr(2.0), MemoryGiB: ptr(16.0), Concurrency: ptr(100.0)}})
	feed(d, 0, 60, Signals{Concurrency: 10, CPU: 7, MemoryGiB: 40})
	got := d.Decide(at(60), 4, 0, 10)
	require.Equal(t, Decision{Desired: 4, Reason: "CPU"}, got, "7 cores at 2 a replica: 4 beats memory (40/16: 3) and concurrency (1)")
	d = newDecider(t, Config{MaxScale: 100, Targets: Targets{CPU: ptr(2.0), MemoryGiB: ptr(16.0)}})
	feed(d, 0, 60, Signals{Concurrency: 10, CPU: 1, MemoryGiB: 70})
	require.Equal(t, Decision{Desired: 5, Reason: "memory"}, d.Decide(at(60), 5, 0, 10))
}

func TestMinScaleNamedWhenItHolds(t *testing.T) {
	d := newDecider(t, Config{MinScale: 2, MaxScale: 100, Targets: Targets{Concurrency: ptr(8.0)}})
	feed(d, 0, 60, Signals{Concurrency: 4})
	got := d.Decide(at(60), 2, 0, 4)
	require.Equal(t, Decision{Desired: 2, Reason: "minScale 2"}, got, "concurrency asks for 1")
}

func TestLargestRecommendationWins(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, Targets: Targets{Concurrency: ptr(100.0), KVCacheUsage: ptr(0.5),
		TokensPerSecond: ptr(1000.0)}})
	feed(d, 0, 60, Signals{Concurrency: 50, KVCacheUsage: 0.9, TokensPerSecond: 2500})
	got := d.Decide(at(60), 5, 0, 50)
	require.Equal(t, 9, got.Desired, "KV: 5 ready x 0.9 / 0.5 = 9 beats tokens (3) and concurrency (1)")
	require.Equal(t, "KV-cache usage", got.Reason)
	require.False(t, got.Panic, "9 is under 200%% of 5")
}

func TestWaitingQueueAsksForMore(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, Targets: Targets{WaitingRequests: ptr(4.0)}})
	feed(d, 0, 60, Signals{Concurrency: 60, Waiting: 12})
	require.Equal(t, 6, d.Decide(at(60), 3, 0, 60).Desired, "3 ready + 12 waiting / 4")
}

func TestOldSamplesLeaveTheWindow(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, StableWindow: 60 * time.Second, MaxScaleDownRate: 100})
	feed(d, 0, 30, Signals{Concurrency: 80})  // 10 replicas' worth, then nothing
	feed(d, 30, 100, Signals{Concurrency: 7}) // 1 replica's worth, with headroom
	require.Equal(t, 1, d.Decide(at(100), 10, 0, 7).Desired)
}

func TestPanicScalesUpAtOnceAndNeverDown(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, StableWindow: 60 * time.Second, PanicWindowPercent: 10})
	feed(d, 0, 54, Signals{Concurrency: 16})  // 2 replicas' worth for most of the window
	feed(d, 54, 60, Signals{Concurrency: 80}) // a spike in the 6 s panic window
	got := d.Decide(at(60), 2, 0, 80)
	require.True(t, got.Panic)
	require.Equal(t, 10, got.Desired, "the panic window's recommendation, not the stable one")

	// The spike ends; still in panic (a stable window long): no scale down.
	feed(d, 60, 90, Signals{Concurrency: 8})
	got = d.Decide(at(90), 10, 0, 8)
	require.True(t, got.Panic)
	require.Equal(t, 10, got.Desired)
	// After a stable window without panic, down (at most halving).
	feed(d, 90, 130, Signals{Concurrency: 8})
	got = d.Decide(at(130), 10, 0, 8)
	require.False(t, got.Panic)
	require.Equal(t, 5, got.Desired)
}

// A load right at a boundary does not scale down to the count it would
// saturate (that count queues, panics back up, and flaps): scale-down keeps
// 10% headroom.
func TestScaleDownKeepsHeadroom(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, PanicThresholdPercent: 100000})
	feed(d, 0, 60, Signals{Concurrency: 16})
	require.Equal(t, 3, d.Decide(at(60), 5, 0, 16).Desired, "16 at target 8 is 2 saturated replicas: keep 3")
	feed(d, 60, 120, Signals{Concurrency: 14})
	require.Equal(t, 2, d.Decide(at(120), 3, 0, 14).Desired, "14 fits 2 with room")
	feed(d, 120, 180, Signals{Concurrency: 16})
	require.Equal(t, 2, d.Decide(at(180), 2, 0, 16).Desired, "and does not scale back up at the boundary")
}

func TestRatesBoundOneDecision(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 1000, MaxScaleUpRate: 2, MaxScaleDownRate: 2, PanicThresholdPercent: 100000})
	feed(d, 0, 60, Signals{Concurrency: 800})
	require.Equal(t, 4, d.Decide(at(60), 2, 0, 800).Desired, "2 ready x up rate 2")
	d2 := newDecider(t, Config{MaxScale: 1000})
	feed(d2, 0, 60, Signals{Concurrency: 8})
	require.Equal(t, 5, d2.Decide(at(60), 10, 0, 8).Desired, "10 ready / down rate 2")
}

func TestScaleDownDelayHoldsTheHighest(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 100, StableWindow: 6 * time.Second, ScaleDownDelay: 30 * time.Second,
		PanicThresholdPercent: 100000, MaxScaleDownRate: 100})
	feed(d, 0, 10, Signals{Concurrency: 40})
	require.Equal(t, 5, d.Decide(at(10), 5, 0, 40).Desired)
	feed(d, 10, 20, Signals{Concurrency: 7})
	require.Equal(t, 5, d.Decide(at(20), 5, 0, 7).Desired, "within the delay")
	feed(d, 20, 45, Signals{Concurrency: 7})
	require.Equal(t, 1, d.Decide(at(45), 5, 0, 7).Desired, "the delay has passed")
}

func TestToZeroAfterGraceOnly(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 10, ScaleToZeroGracePeriod: 30 * time.Second, StableWindow: 10 * time.Second})
	feed(d, 0, 5, Signals{Concurrency: 4})
	feed(d, 5, 20, Signals{})
	got := d.Decide(at(20), 1, 0, 0)
	require.Equal(t, 1, got.Desired, "15 s idle < 30 s grace")
	feed(d, 20, 40, Signals{})
	require.Equal(t, 0, d.Decide(at(40), 1, 0, 0).Desired, "35 s idle")

	// Never to zero with a request in flight or buffered, grace or not.
	d2 := newDecider(t, Config{MaxScale: 10, ScaleToZeroGracePeriod: time.Second, StableWindow: 10 * time.Second})
	feed(d2, 0, 60, Signals{})
	require.Equal(t, 1, d2.Decide(at(60), 1, 0, 1).Desired)
	require.Equal(t, 1, d2.Decide(at(61), 1, 1, 0).Desired)
	// minScale holds.
	d3 := newDecider(t, Config{MinScale: 2, MaxScale: 10, ScaleToZeroGracePeriod: time.Second})
	feed(d3, 0, 60, Signals{})
	require.Equal(t, 2, d3.Decide(at(60), 2, 0, 0).Desired)
}

func TestScaleFromZeroAtOnce(t *testing.T) {
	d := newDecider(t, Config{MaxScale: 10, ActivationScale: 2})
	// The first buffered request, before any sample reached the windows.
	got := d.Decide(at(0), 0, 1, 0)
	require.Equal(t, 2, got.Desired)
	require.Equal(t, "activation: demand at zero", got.Reason)
	// A burst already recorded asks for more than the activation scale.
	feed(d, 0, 2, Signals{Concurrency: 50, Buffered: 50})
	require.Equal(t, 7, d.Decide(at(2), 0, 50, 0).Desired)
}

func TestInitialScale(t *testing.T) {
	d, err := NewDecider(Config{MinScale: 1, MaxScale: 5, InitialScale: 3}, t0)
	require.NoError(t, err)
	require.Equal(t, Decision{Desired: 3, Reason: "initial scale"}, d.Decide(t0, 0, 0, 0))
}

func TestConfigErrorsNameTheField(t *testing.T) {
	_, err := NewDecider(Config{MinScale: 3, MaxScale: 2, PanicThresholdPercent: 50,
		Targets: Targets{KVCacheUsage: ptr(1.5)}}, t0)
	require.ErrorContains(t, err, "maxScale: 2 must be >= minScale")
	require.ErrorContains(t, err, "panicThresholdPercent: 50 must be > 100")
	require.ErrorContains(t, err, "target.kvCacheUsage: 1.5 must be in (0, 1]")
}

// Replicas still starting (none ready yet) are not taken away before the
// grace period, counted from the decider's creation.
func TestStartingReplicasWaitForGrace(t *testing.T) {
	d, err := NewDecider(Config{MaxScale: 4, InitialScale: 1, ScaleToZeroGracePeriod: 30 * time.Second}, t0)
	require.NoError(t, err)
	require.Equal(t, 1, d.Decide(t0, 0, 0, 0).Desired)
	require.Equal(t, 1, d.Decide(at(1), 0, 0, 0).Desired, "starting, idle, within grace")
	require.Equal(t, 0, d.Decide(at(31), 1, 0, 0).Desired, "idle past grace")
	require.Equal(t, 0, d.Decide(at(32), 0, 0, 0).Desired, "at zero and idle: stays")
}
