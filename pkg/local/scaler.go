package local

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// loadSource is what the scaler observes of a revision role: the
// activators' demand and the queue-proxies' last reports.
type loadSource interface {
	Load(fleet.Key) (activator.Load, bool)
	PodStats(fleet.Key) []*stats.Stat
}

// scaleTarget is one replica set under the autoscaler.
type scaleTarget struct {
	role   *autoscaler.Role
	counts map[string]int // replicas per accelerator variant, as last applied

	// variants are where a replica can run, cheapest first (one unnamed
	// variant without accelerator variants).
	variants []autoscaler.Variant

	// unplaceable mirrors role.Unplaceable for readers outside the pass
	// (/kvasir/replicas, metrics), who must not wait for one.
	unplaceable atomic.Int64
}

// newScaleTarget makes a replica set's target.
func newScaleTarget(key fleet.Key, d *autoscaler.Decider, variants []autoscaler.Variant) *scaleTarget {
	return &scaleTarget{role: &autoscaler.Role{Key: key, Decider: d}, variants: variants}
}

// scaler runs the autoscaler's pass over every replica set of local mode:
// on a tick, and at once when a request is buffered (the poke). It is the
// pass's Observer (the activators' loads) and Reporter (logs); the
// inventory is its Capacity and the process runtime applies placements.
type scaler struct {
	log    *slog.Logger
	loads  loadSource
	fleet  fleet.VariantScaler
	tick   time.Duration
	pokeCh chan struct{}

	inv *autoscaler.Inventory // nil: accelerators are not counted

	// passMu serialises passes and owns the targets' state (role, counts)
	// while one runs; remove takes it too, so a replica set removed is
	// never scaled again. mu guards the targets map alone and is never
	// held across I/O: a pass starting or stopping processes blocks neither
	// add, nor poke, nor the readers of unplaceable.
	passMu  sync.Mutex
	mu      sync.Mutex
	targets map[fleet.Key]*scaleTarget
}

var (
	_ autoscaler.Observer = (*scaler)(nil)
	_ autoscaler.Reporter = (*scaler)(nil)
)

func newScaler(log *slog.Logger, loads loadSource, f fleet.VariantScaler, tick time.Duration, inv *autoscaler.Inventory) *scaler {
	return &scaler{log: log, loads: loads, fleet: f, tick: tick, pokeCh: make(chan struct{}, 1),
		targets: map[fleet.Key]*scaleTarget{}, inv: inv}
}

// capacity is what the pass places on: the inventory's free devices, or
// nothing counted.
func (s *scaler) capacity() autoscaler.Capacity {
	if s.inv == nil {
		return autoscaler.Pool{}
	}
	return s.inv
}

// variants are t's variants with the replicas on each now.
func (s *scaler) variants(t *scaleTarget) []autoscaler.Variant {
	vs := slices.Clone(t.variants)
	for i := range vs {
		vs[i].Current = t.counts[vs[i].Name]
		if s.inv == nil {
			vs[i].Need = nil // accelerators are not counted
		}
	}
	return vs
}

// place spreads n replicas of t over its variants by cost and the free
// accelerators, recording what does not fit.
func (s *scaler) place(t *scaleTarget, n int) (map[string]int, autoscaler.Placement) {
	vs := s.variants(t)
	p := autoscaler.Place(vs, s.capacity().Free(), n)
	t.role.Unplaceable = p.Unplaceable
	t.unplaceable.Store(int64(p.Unplaceable))
	return autoscaler.CountsOf(vs, p), p
}

// unplaceable reports the replicas of key that did not fit.
func (s *scaler) unplaceable(key fleet.Key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.targets[key]; ok {
		return int(t.unplaceable.Load())
	}
	return 0
}

func (s *scaler) add(t *scaleTarget) {
	s.mu.Lock()
	s.targets[t.role.Key] = t
	s.mu.Unlock()
}

func (s *scaler) remove(key fleet.Key) {
	s.passMu.Lock() // a pass under way finishes first
	defer s.passMu.Unlock()
	s.mu.Lock()
	delete(s.targets, key)
	s.mu.Unlock()
}

// poke asks for a decision now (a request was buffered). Never blocks.
func (s *scaler) poke(fleet.Key) {
	select {
	case s.pokeCh <- struct{}{}:
	default:
	}
}

func (s *scaler) run(ctx context.Context) {
	t := time.NewTicker(s.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.pokeCh:
		}
		s.decideAll(ctx, time.Now())
	}
}

// decideAll runs one pass.
func (s *scaler) decideAll(ctx context.Context, now time.Time) {
	s.passMu.Lock()
	defer s.passMu.Unlock()
	pass := autoscaler.Pass{Observer: s, Capacity: s.capacity(), Scaler: s.fleet, Reporter: s}
	_, _ = pass.Run(ctx, now) // Observe does not fail; apply errors are logged by Placed
}

// Observe implements autoscaler.Observer: every replica set the
// activators know. The caller holds s.passMu.
func (s *scaler) Observe(_ context.Context, _ time.Time) ([]autoscaler.Observed, error) {
	s.mu.Lock()
	targets := make([]*scaleTarget, 0, len(s.targets))
	for _, t := range s.targets {
		targets = append(targets, t)
	}
	s.mu.Unlock()
	out := make([]autoscaler.Observed, 0, len(targets))
	for _, t := range targets {
		key := t.role.Key
		load, ok := s.loads.Load(key)
		if !ok {
			continue
		}
		out = append(out, autoscaler.Observed{Role: t.role, Observation: autoscaler.Observation{
			Ready: load.Ready, InFlight: load.InFlight, Buffered: load.Buffered,
			Pods: s.loads.PodStats(key), Variants: s.variants(t)}})
	}
	return out, nil
}

// Decided implements autoscaler.Reporter.
func (s *scaler) Decided(*autoscaler.Role, autoscaler.Signals, autoscaler.Decision) {}

// Placing implements autoscaler.Reporter: what does not fit is said once
// per change, and a change is logged before it is applied.
func (s *scaler) Placing(res *autoscaler.Result) {
	if t := s.target(res.Role.Key); t != nil {
		t.unplaceable.Store(int64(res.Placement.Unplaceable))
	}
	key := res.Role.Key.String()
	if res.NewMessage {
		s.log.Warn("not enough accelerators for the replicas the autoscaler wants", slog.String("replicaSet", key),
			slog.Int("wanted", res.Decision.Desired), slog.Int("placeable", res.Placement.Total()), slog.Any("missing", res.Placement.Missing))
	}
	if res.Changed {
		s.log.Info("autoscaler", slog.String("replicaSet", key), slog.Int("from", res.From),
			slog.Int("to", res.Placement.Total()), slog.Any("variants", res.Counts), slog.Bool("panic", res.Decision.Panic),
			slog.String("reason", res.Decision.Reason))
	}
}

// Placed implements autoscaler.Reporter: an applied placement becomes the
// replica set's counts; a failed one is logged and retried next pass.
func (s *scaler) Placed(res *autoscaler.Result) {
	switch {
	case res.Err != nil:
		s.log.Error("scale failed", slog.String("replicaSet", res.Role.Key.String()), slog.Any("error", res.Err))
	case res.Changed:
		if t := s.target(res.Role.Key); t != nil {
			t.counts = res.Counts
		}
	}
}

// target returns the replica set of key, nil once removed.
func (s *scaler) target(key fleet.Key) *scaleTarget {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[key]
}
