package local

import (
	"context"
	"log/slog"
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
	desired int

	// Cumulative token counters per pod at the last tick, for the rate.
	tokens map[string]uint64
	last   time.Time

	// need is the accelerators one replica takes (nil: none counted);
	// unplaceable is how many replicas the decider wanted beyond what the
	// inventory holds.
	need        map[string]int
	unplaceable int
}

// scaler runs the autoscaler's decider for every replica set of local
// mode: on a tick, and at once when a request is buffered (the poke).
type scaler struct {
	log    *slog.Logger
	loads  loadSource
	fleet  fleet.Scaler
	tick   time.Duration
	pokeCh chan struct{}

	inv *autoscaler.Inventory // nil: accelerators are not counted

	mu      sync.Mutex
	targets map[fleet.Key]*scaleTarget
}

func newScaler(log *slog.Logger, loads loadSource, f fleet.Scaler, tick time.Duration, inv *autoscaler.Inventory) *scaler {
	return &scaler{log: log, loads: loads, fleet: f, tick: tick, pokeCh: make(chan struct{}, 1),
		targets: map[fleet.Key]*scaleTarget{}, inv: inv}
}

// placeable caps n replicas of t by the free accelerators, recording what
// does not fit.
func (s *scaler) placeable(t *scaleTarget, n int) int {
	t.unplaceable = 0
	if s.inv == nil || len(t.need) == 0 || n <= t.desired {
		return n
	}
	fit := s.inv.Placeable(t.need)
	if fit < 0 || t.desired+fit >= n {
		return n
	}
	t.unplaceable = n - (t.desired + fit)
	return t.desired + fit
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
		sig := t.signals(load, s.loads.PodStats(t.key), now)
		t.decider.Record(now, sig)
		want[t.key] = t.decider.Decide(now, load.Ready, float64(load.Buffered), float64(load.InFlight))
	}
	couplePrefill(want)
	for key, dec := range want {
		t := s.targets[key]
		wanted := dec.Desired
		if dec.Desired = s.placeable(t, dec.Desired); dec.Desired < wanted {
			s.log.Warn("not enough accelerators for the replicas the autoscaler wants", slog.String("replicaSet", t.key.String()),
				slog.Int("wanted", wanted), slog.Int("placeable", dec.Desired), slog.Any("perReplica", t.need))
		}
		if dec.Desired == t.desired {
			continue
		}
		s.log.Info("autoscaler", slog.String("replicaSet", t.key.String()), slog.Int("from", t.desired),
			slog.Int("to", dec.Desired), slog.Bool("panic", dec.Panic), slog.String("reason", dec.Reason))
		if err := s.fleet.Scale(ctx, t.key, dec.Desired); err != nil {
			s.log.Error("scale failed", slog.String("replicaSet", t.key.String()), slog.Any("error", err))
			continue
		}
		t.desired = dec.Desired
	}
}

// couplePrefill keeps a disaggregated revision's roles together at zero: a
// prefill role follows its decode role to zero, and wakes with it (prefill
// requests are never buffered, so the prefill role sees no demand of its
// own while it is at zero). Above that each role scales on its own signals.
func couplePrefill(want map[fleet.Key]autoscaler.Decision) {
	for key, dec := range want {
		if key.Role != activator.RolePrefill {
			continue
		}
		decodeKey := key
		decodeKey.Role = activator.RoleDecode
		decode, ok := want[decodeKey]
		if !ok {
			continue
		}
		switch {
		case decode.Desired == 0 && dec.Desired > 0:
			dec.Desired, dec.Reason = 0, "its decode role is at zero"
		case decode.Desired > 0 && dec.Desired == 0:
			dec.Desired, dec.Reason = 1, "its decode role is awake"
		}
		want[key] = dec
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
