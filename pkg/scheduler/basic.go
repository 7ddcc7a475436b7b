package scheduler

import (
	"math/rand/v2"
	"slices"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// random scores pods uniformly at random: a random pick.
type random struct{}

func newRandom(raw []byte, _ *Env) (Plugin, error) {
	return random{}, decodeConfig(raw, &struct{}{})
}

func (random) Name() string { return Random }

func (random) Score(_ *Cycle, _ []*Pod, out []float64) {
	for i := range out {
		out[i] = rand.Float64()
	}
}

// roundRobin scores 1 the pod after the last one picked, in name order.
type roundRobin struct{ last string }

func newRoundRobin(raw []byte, _ *Env) (Plugin, error) {
	return &roundRobin{}, decodeConfig(raw, &struct{}{})
}

func (*roundRobin) Name() string { return RoundRobin }

func (r *roundRobin) Score(_ *Cycle, pods []*Pod, out []float64) {
	// The next name after last, wrapping to the smallest.
	next, first := -1, 0
	for i, p := range pods {
		if p.Name < pods[first].Name {
			first = i
		}
		if p.Name > r.last && (next < 0 || p.Name < pods[next].Name) {
			next = i
		}
	}
	if next < 0 {
		next = first
	}
	out[next] = 1
}

func (r *roundRobin) Picked(_ *Cycle, p *Pod) { r.last = p.Name }

// leastRequest prefers the pod with the least load (Pod.Load: requests in
// flight from this activator plus the engine's waiting queue), scaled so the
// least loaded scores 1 and the most loaded 0.
type leastRequest struct{}

func newLeastRequest(raw []byte, _ *Env) (Plugin, error) {
	return leastRequest{}, decodeConfig(raw, &struct{}{})
}

func (leastRequest) Name() string { return LeastRequest }

func (leastRequest) Score(_ *Cycle, pods []*Pod, out []float64) {
	lo, hi := loadRange(pods)
	for i, p := range pods {
		if hi == lo {
			out[i] = 1
		} else {
			out[i] = (hi - p.Load()) / (hi - lo)
		}
	}
}

func loadRange(pods []*Pod) (lo, hi float64) {
	lo, hi = pods[0].Load(), pods[0].Load()
	for _, p := range pods[1:] {
		l := p.Load()
		lo, hi = min(lo, l), max(hi, l)
	}
	return lo, hi
}

// kvCacheUsage prefers pods with less KV-cache pressure: 1 - usage.
type kvCacheUsage struct{}

func newKVCacheUsage(raw []byte, _ *Env) (Plugin, error) {
	return kvCacheUsage{}, decodeConfig(raw, &struct{}{})
}

func (kvCacheUsage) Name() string { return KVCacheUsage }

func (kvCacheUsage) Score(_ *Cycle, pods []*Pod, out []float64) {
	for i, p := range pods {
		out[i] = 1
		if s := p.Stat(); s != nil && s.Engine.Scraped {
			out[i] = 1 - min(max(s.Engine.KVCacheUsage, 0), 1)
		}
	}
}

// loraAffinity prefers pods that have the requested adapter loaded: running
// (vllm:lora_requests_info) or listed in the engine's model list, where
// adapters loaded at run time appear.
type loraAffinity struct{}

func newLoRAAffinity(raw []byte, _ *Env) (Plugin, error) {
	return loraAffinity{}, decodeConfig(raw, &struct{}{})
}

func (loraAffinity) Name() string { return LoRAAffinity }

func (loraAffinity) Score(c *Cycle, pods []*Pod, out []float64) {
	for i, p := range pods {
		if c.Req.Adapter == "" {
			out[i] = 1
			continue
		}
		if s := p.Stat(); s != nil && (slices.Contains(s.Engine.LoRAAdapters, c.Req.Adapter) ||
			slices.ContainsFunc(s.Engine.Models, func(m stats.ModelCard) bool { return m.ID == c.Req.Adapter })) {
			out[i] = 1
		}
	}
}
