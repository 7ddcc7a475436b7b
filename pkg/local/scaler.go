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

	// Cumulative token counters per pod at the last tick, for the rate.
	tokens map[string]uint64
	last   time.Time

	// variants are where a replica can run, cheapest first (one unnamed
	// variant without accelerator variants); unplaceable is how many
	// replicas the decider wanted beyond what the inventory holds.
	variants    []autoscaler.Variant
	unplaceable int

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
	waking := map[fleet.Key]bool{}
	for _, t := range s.targets {
		load, ok := s.loads.Load(t.key)
		if !ok {
			continue
		}
		sig := t.signals(load, s.loads.PodStats(t.key), now)
		t.decider.Record(now, sig)
		want[t.key] = t.decider.Decide(now, load.Ready, float64(load.Buffered), float64(load.InFlight))
		waking[t.key] = t.desired == 0 && want[t.key].Desired > 0
	}
	s.couplePrefill(want)
	// Shrinking first frees accelerators; then replica sets waking from
	// zero claim them before others grow.
	order := slices.SortedFunc(maps.Keys(want), func(a, b fleet.Key) int {
		rank := func(k fleet.Key) int {
			switch {
			case want[k].Desired < s.targets[k].desired:
				return 0
			case waking[k]:
				return 1
			}
			return 2
		}
		return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a.String(), b.String()))
	})
	for _, key := range order {
		s.apply(ctx, s.targets[key], want[key])
	}
}

// apply places a decision on the variants and scales to it.
func (s *scaler) apply(ctx context.Context, t *scaleTarget, dec autoscaler.Decision) {
	counts, p := s.place(t, dec.Desired)
	if p.Unplaceable > 0 {
		s.log.Warn("not enough accelerators for the replicas the autoscaler wants", slog.String("replicaSet", t.key.String()),
			slog.Int("wanted", dec.Desired), slog.Int("placeable", p.Total()), slog.Any("missing", p.Missing))
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

// couplePrefill applies autoscaler.CoupleRoles to every disaggregated
// revision's prefill decision.
func (s *scaler) couplePrefill(want map[fleet.Key]autoscaler.Decision) {
	for key, dec := range want {
		if key.Role != activator.RolePrefill {
			continue
		}
		decodeKey := key
		decodeKey.Role = activator.RoleDecode
		if decode, ok := want[decodeKey]; ok {
			t := s.targets[key]
			want[key] = autoscaler.CoupleRoles(decode, dec, t.ratio, t.decider.Clamp)
		}
	}
}

// signals turns the activators' load and the pods' reports into the
// decider's observation; the token rate is the growth of the pods'
// cumulative counters since the last tick.
func (t *scaleTarget) signals(load activator.Load, pods []*stats.Stat, now time.Time) autoscaler.Signals {
	s := autoscaler.Signals{Concurrency: float64(load.InFlight + load.Buffered), Buffered: float64(load.Buffered)}
	var kv float64
	var tokens uint64
	seen := make(map[string]uint64, len(pods))
	for _, p := range pods {
		s.Waiting += p.Engine.Waiting
		kv += p.Engine.KVCacheUsage
		total := p.PromptTokens + p.CompletionTokens
		if prev, ok := t.tokens[p.Pod]; ok && total >= prev {
			tokens += total - prev
		}
		seen[p.Pod] = total
	}
	if len(pods) > 0 {
		s.KVCacheUsage = kv / float64(len(pods))
	}
	if dt := now.Sub(t.last).Seconds(); !t.last.IsZero() && dt > 0 {
		s.TokensPerSecond = float64(tokens) / dt
	}
	t.tokens, t.last = seen, now
	return s
}
