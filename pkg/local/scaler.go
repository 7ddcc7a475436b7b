package local

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// scaleTarget is what the simple scaler knows of one replica set.
type scaleTarget struct {
	key               fleet.Key
	minScale          int
	maxScale          int // 0 = unbounded
	targetConcurrency float64
	grace             time.Duration // scale-to-zero grace period
	stableWindow      time.Duration // how long a lower recommendation must hold

	desired    int
	belowSince time.Time
}

// loadSource reads a revision's demand (the activator).
type loadSource interface {
	Load(fleet.Key) (activator.Load, bool)
}

// scaler is the simple scaler of local mode: scale up at once on demand
// (in-flight + buffered over the per-replica concurrency target), scale down
// after the recommendation stayed lower for the stable window, and to zero
// after the grace period without any request.
type scaler struct {
	log    *slog.Logger
	loads  loadSource
	fleet  fleet.Scaler
	tick   time.Duration
	pokeCh chan struct{}

	mu      sync.Mutex
	targets map[fleet.Key]*scaleTarget
}

func newScaler(log *slog.Logger, loads loadSource, f fleet.Scaler, tick time.Duration) *scaler {
	return &scaler{log: log, loads: loads, fleet: f, tick: tick, pokeCh: make(chan struct{}, 1),
		targets: map[fleet.Key]*scaleTarget{}}
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
	for _, t := range s.targets {
		load, ok := s.loads.Load(t.key)
		if !ok {
			continue
		}
		next := t.decide(load, now)
		if next == t.desired {
			continue
		}
		if err := s.fleet.Scale(ctx, t.key, next); err != nil {
			s.log.Error("scale failed", slog.String("revision", t.key.String()), slog.Any("error", err))
			continue
		}
		t.desired = next
	}
}

// decide returns the desired replicas for the observed load.
func (t *scaleTarget) decide(load activator.Load, now time.Time) int {
	demand := load.InFlight + load.Buffered
	want := int(math.Ceil(float64(demand) / t.targetConcurrency))
	if want < t.minScale {
		want = t.minScale
	}
	if t.maxScale > 0 && want > t.maxScale {
		want = t.maxScale
	}
	if demand > 0 && want < 1 {
		want = 1
	}
	switch {
	case want >= t.desired:
		t.belowSince = time.Time{}
		return want
	case want == 0:
		// To zero only after the grace period with no request at all.
		if now.Sub(load.LastActive) >= t.grace {
			return 0
		}
		if t.desired > 1 {
			return t.stepDown(1, now)
		}
		return t.desired
	default:
		return t.stepDown(want, now)
	}
}

func (t *scaleTarget) stepDown(want int, now time.Time) int {
	if t.belowSince.IsZero() {
		t.belowSince = now
	}
	if now.Sub(t.belowSince) >= t.stableWindow {
		t.belowSince = time.Time{}
		return want
	}
	return t.desired
}
