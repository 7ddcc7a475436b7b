package autoscaling

import (
	"context"
	"log/slog"
	"sync"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// podTarget is a revision pod whose queue-proxy the autoscaler follows.
type podTarget struct {
	key  fleet.Key
	addr string // host:port of its queue-proxy
}

// podStats follows the queue-proxies' stats streams and keeps each pod's
// last report.
type podStats struct {
	log *slog.Logger

	mu   sync.Mutex
	subs map[string]*podSub // by namespace/name
}

type podSub struct {
	podTarget
	cancel context.CancelFunc
	last   *stats.Stat
}

func newPodStats(log *slog.Logger) *podStats {
	return &podStats{log: log, subs: map[string]*podSub{}}
}

// sync follows exactly the pods given (by namespace/name): new ones are
// subscribed to, gone ones (or ones with a new address) dropped.
func (p *podStats) sync(ctx context.Context, pods map[string]podTarget) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, s := range p.subs {
		if t, ok := pods[name]; !ok || t != s.podTarget {
			s.cancel()
			delete(p.subs, name)
		}
	}
	for name, t := range pods {
		if _, ok := p.subs[name]; ok {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		s := &podSub{podTarget: t, cancel: cancel}
		p.subs[name] = s
		go stats.Subscribe(sctx, t.addr, func(m stats.Message) {
			if m.Type != stats.TypeStat {
				return
			}
			p.mu.Lock()
			s.last = m.Stat
			p.mu.Unlock()
		}, p.log.With(slog.String("pod", name)))
	}
}

// stats returns the last report of every followed pod of a replica set.
func (p *podStats) stats() map[fleet.Key][]*stats.Stat {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[fleet.Key][]*stats.Stat{}
	for _, s := range p.subs {
		if s.last != nil {
			out[s.key] = append(out[s.key], s.last)
		}
	}
	return out
}

// stop ends every subscription.
func (p *podStats) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, s := range p.subs {
		s.cancel()
		delete(p.subs, name)
	}
}
