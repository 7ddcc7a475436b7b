package local

import (
	"cmp"
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
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
	key     fleet.Key
	decider *autoscaler.Decider
	desired int            // the sum of counts
	counts  map[string]int // replicas per accelerator variant

	rate autoscaler.TokenRate

	// variants are where a replica can run, cheapest first (one unnamed
	// variant without accelerator variants); unplaceable is how many
	// replicas the decider wanted beyond what the inventory holds.
	variants    []autoscaler.Variant
	unplaceable int
	message     string // the last unplaceable message, "" when all fit

	// ratio bounds a prefill role by its decode role (nil: unbounded).
	ratio *autoscaler.Ratio
}

// scaler runs the autoscaler's decider for every replica set of local
// mode: on a tick, and at once when a request is buffered (the poke).
type scaler struct {
	log    *slog.Logger
	loads  loadSource
	fleet  fleet.VariantScaler
	tick   time.Duration
	pokeCh chan struct{}

	inv *autoscaler.Inventory // nil: accelerators are not counted

	mu      sync.Mutex
	targets map[fleet.Key]*scaleTarget
}

func newScaler(log *slog.Logger, loads loadSource, f fleet.VariantScaler, tick time.Duration, inv *autoscaler.Inventory) *scaler {
	return &scaler{log: log, loads: loads, fleet: f, tick: tick, pokeCh: make(chan struct{}, 1),
		targets: map[fleet.Key]*scaleTarget{}, inv: inv}
}

// place spreads n replicas of t over its variants by cost and the free
// accelerators, recording what does not fit.
func (s *scaler) place(t *scaleTarget, n int) (map[string]int, autoscaler.Placement) {
	vs := slices.Clone(t.variants)
	var free map[string]int
	if s.inv != nil {
		free = s.inv.Free()
	}
	for i := range vs {
		vs[i].Current = t.counts[vs[i].Name]
		if s.inv == nil {
			vs[i].Need = nil // accelerators are not counted
		}
	}
	p := autoscaler.Place(vs, free, n)
	t.unplaceable = p.Unplaceable
	counts := make(map[string]int, len(vs))
	for i, v := range vs {
		if p.Counts[i] > 0 {
			counts[v.Name] = p.Counts[i]
		}
	}
	return counts, p
}

// unplaceable reports the replicas of key that did not fit.
func (s *scaler) unplaceable(key fleet.Key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.targets[key]; ok {
		return t.unplaceable
	}
	return 0
}

func (s *scaler) add(t *scaleTarget) {
	s.mu.Lock()
	s.targets[t.key] = t
	s.mu.Unlock()
}

func (s *scaler) remove(key fleet.Key) {
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

func (s *scaler) decideAll(ctx context.Context, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := make(map[fleet.Key]autoscaler.Decision, len(s.targets))
	for _, t := range s.targets {
		load, ok := s.loads.Load(t.key)
		if !ok {
			continue
		}
		sig := t.rate.Observe(load.InFlight, load.Buffered, s.loads.PodStats(t.key), now)
		t.decider.Record(now, sig)
		want[t.key] = t.decider.Decide(now, load.Ready, float64(load.Buffered), float64(load.InFlight))
	}
	s.couplePrefill(want)
	order := slices.SortedFunc(maps.Keys(want), func(a, b fleet.Key) int {
		pa := autoscaler.Priority(s.targets[a].desired, want[a].Desired)
		pb := autoscaler.Priority(s.targets[b].desired, want[b].Desired)
		return cmp.Or(cmp.Compare(pa, pb), cmp.Compare(a.String(), b.String()))
	})
	for _, key := range order {
		s.apply(ctx, s.targets[key], want[key])
	}
}

// apply places a decision on the variants and scales to it.
func (s *scaler) apply(ctx context.Context, t *scaleTarget, dec autoscaler.Decision) {
	counts, p := s.place(t, dec.Desired)
	if msg := p.Message(); msg != t.message { // said once per change, not every decision
		if msg != "" {
			s.log.Warn("not enough accelerators for the replicas the autoscaler wants", slog.String("replicaSet", t.key.String()),
				slog.Int("wanted", dec.Desired), slog.Int("placeable", p.Total()), slog.Any("missing", p.Missing))
		}
		t.message = msg
	}
	if maps.Equal(counts, t.counts) {
		return
	}
	s.log.Info("autoscaler", slog.String("replicaSet", t.key.String()), slog.Int("from", t.desired),
		slog.Int("to", p.Total()), slog.Any("variants", counts), slog.Bool("panic", dec.Panic), slog.String("reason", dec.Reason))
	if err := s.fleet.ScaleVariants(ctx, t.key, counts); err != nil {
		s.log.Error("scale failed", slog.String("replicaSet", t.key.String()), slog.Any("error", err))
		return
	}
	t.counts, t.desired = counts, p.Total()
}

// couplePrefill couples every disaggregated revision's prefill decision
// to its decode decision.
func (s *scaler) couplePrefill(want map[fleet.Key]autoscaler.Decision) {
	autoscaler.CoupleAll(want, func(k fleet.Key) (*autoscaler.Ratio, func(int) int) {
		t := s.targets[k]
		return t.ratio, t.decider.Clamp
	})
}
