package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// balanced discounts a prefix score on a pod whose load exceeds the least
// loaded pod's by more than slack: in full up to slack, then in proportion
// slack/excess. One hot prefix thus fills its pod only until another pod is
// slack requests emptier; then the prefix is computed there too and the two
// share it.
func balanced(frac, load, minLoad, slack float64) float64 {
	excess := load - minLoad
	if excess <= slack {
		return frac
	}
	return frac * slack / excess
}

// KVCacheAwareConfig configures the kv-cache-aware scorer.
type KVCacheAwareConfig struct {
	// SpeculativeTTL is how long a decision's speculative index entry lives
	// when the pod's queue-proxy does not confirm it first. Default 2s.
	SpeculativeTTL *metav1.Duration `json:"speculativeTTL,omitempty"`
	// BalanceSlack is the load (requests) above the least-loaded pod up to
	// which a prefix match counts in full. Default 8.
	BalanceSlack *float64 `json:"balanceSlack,omitempty"`
}

// kvCacheAware scores the fraction of the prompt's blocks a pod holds
// according to the index its queue-proxies feed (plus speculative entries),
// discounted by load (see balanced).
type kvCacheAware struct {
	ttl   time.Duration
	slack float64
}

func slackOf(p *float64) (float64, error) {
	if p == nil {
		return 8, nil
	}
	if *p < 0 {
		return 0, fmt.Errorf("balanceSlack: must be >= 0, got %g", *p)
	}
	return *p, nil
}

func newKVCacheAware(raw []byte, _ *Env) (Plugin, error) {
	var cfg KVCacheAwareConfig
	if err := decodeConfig(raw, &cfg); err != nil {
		return nil, err
	}
	k := &kvCacheAware{ttl: 2 * time.Second}
	if cfg.SpeculativeTTL != nil {
		if cfg.SpeculativeTTL.Duration <= 0 {
			return nil, fmt.Errorf("speculativeTTL: must be > 0, got %s", cfg.SpeculativeTTL.Duration)
		}
		k.ttl = cfg.SpeculativeTTL.Duration
	}
	var err error
	k.slack, err = slackOf(cfg.BalanceSlack)
	return k, err
}

func (*kvCacheAware) Name() string { return KVCacheAware }

func (k *kvCacheAware) Score(c *Cycle, pods []*Pod, out []float64) {
	matched, blocks := c.PrefixMatch()
	if blocks == 0 {
		return
	}
	lo, _ := loadRange(pods)
	for i, p := range pods {
		if p.Slot < 0 {
			continue
		}
		out[i] = balanced(float64(matched[p.Slot])/float64(blocks), p.Load(), lo, k.slack)
	}
}

func (k *kvCacheAware) Picked(c *Cycle, p *Pod) {
	if c.Env == nil || c.Env.Index == nil || p.Slot < 0 {
		return
	}
	c.Env.Index.Speculate(p.Slot, c.Req.Hashes(c.Env.Index.BlockSize()), k.ttl)
}

// PrefixCacheConfig configures the prefix-cache scorer: the router-local
// approximate prefix table that other routers ship, kept as the baseline.
type PrefixCacheConfig struct {
	// BlockSize is the tokens per hashed block (16 tokens = 64 characters,
	// the block other routers hash). Default 16.
	BlockSize int `json:"blockSize,omitempty"`
	// MaxBlocks is how many leading blocks are matched. Default 256.
	MaxBlocks int `json:"maxBlocks,omitempty"`
	// CapacityBlocks is the table's LRU capacity per pod. Default 31250.
	CapacityBlocks int `json:"capacityBlocks,omitempty"`
}

// prefixCache remembers, per pod, the prompt blocks this router sent there,
// in an LRU of fixed capacity, and scores the leading match. It knows
// nothing of the engines' real caches: not their evictions, not other
// routers' requests.
type prefixCache struct {
	cfg PrefixCacheConfig

	mu   sync.Mutex
	pods map[string]*lruSet
}

func newPrefixCache(raw []byte, _ *Env) (Plugin, error) {
	cfg := PrefixCacheConfig{BlockSize: 16, MaxBlocks: 256, CapacityBlocks: 31250}
	if err := decodeConfig(raw, &cfg); err != nil {
		return nil, err
	}
	switch {
	case cfg.BlockSize < 1:
		return nil, fmt.Errorf("blockSize: must be >= 1, got %d", cfg.BlockSize)
	case cfg.MaxBlocks < 1:
		return nil, fmt.Errorf("maxBlocks: must be >= 1, got %d", cfg.MaxBlocks)
	case cfg.CapacityBlocks < 1:
		return nil, fmt.Errorf("capacityBlocks: must be >= 1, got %d", cfg.CapacityBlocks)
	}
	return &prefixCache{cfg: cfg, pods: map[string]*lruSet{}}, nil
}

func (*prefixCache) Name() string { return PrefixCache }

func (pc *prefixCache) hashes(r *Request) []uint64 {
	h := r.Hashes(pc.cfg.BlockSize)
	return h[:min(len(h), pc.cfg.MaxBlocks)]
}

func (pc *prefixCache) Score(c *Cycle, pods []*Pod, out []float64) {
	hs := pc.hashes(c.Req)
	if len(hs) == 0 {
		return
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for i, p := range pods {
		if set := pc.pods[p.Name]; set != nil {
			out[i] = float64(set.leading(hs)) / float64(len(hs))
		}
	}
}

func (pc *prefixCache) Picked(c *Cycle, p *Pod) {
	hs := pc.hashes(c.Req)
	if len(hs) == 0 {
		return
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	set := pc.pods[p.Name]
	if set == nil {
		set = newLRUSet(pc.cfg.CapacityBlocks)
		pc.pods[p.Name] = set
	}
	for _, h := range hs {
		set.touch(h)
	}
}

// OracleConfig configures the oracle scorer.
type OracleConfig struct {
	// Timeout bounds asking one pod. Default 200ms.
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// BalanceSlack as for kv-cache-aware. Default 8.
	BalanceSlack *float64 `json:"balanceSlack,omitempty"`
}

// oracle asks every candidate's engine (the simulator's /sim/prefix-match,
// through the queue-proxy) how much of the prompt it holds right now: the
// true cache state, the physical limit of cache-aware routing. For
// benchmarks against the simulator only: it costs a round trip per pod per
// decision.
type oracle struct {
	timeout time.Duration
	slack   float64
	client  *upstream.Client
	log     *slog.Logger
}

func newOracle(raw []byte, env *Env) (Plugin, error) {
	var cfg OracleConfig
	if err := decodeConfig(raw, &cfg); err != nil {
		return nil, err
	}
	o := &oracle{timeout: 200 * time.Millisecond, client: env.Upstream, log: env.Log}
	if cfg.Timeout != nil {
		if cfg.Timeout.Duration <= 0 {
			return nil, fmt.Errorf("timeout: must be > 0, got %s", cfg.Timeout.Duration)
		}
		o.timeout = cfg.Timeout.Duration
	}
	if o.client == nil {
		o.client = upstream.New()
	}
	var err error
	o.slack, err = slackOf(cfg.BalanceSlack)
	return o, err
}

func (*oracle) Name() string { return Oracle }

// OraclePath is where the simulator answers prefix-match questions.
const OraclePath = "/sim/prefix-match"

func (o *oracle) Score(c *Cycle, pods []*Pod, out []float64) {
	if c.Req.API != APIChat && c.Req.API != APICompletions {
		return
	}
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { out[i] = o.ask(p, c.Req) })
	}
	wg.Wait()
	lo, _ := loadRange(pods)
	for i, p := range pods {
		out[i] = balanced(out[i], p.Load(), lo, o.slack)
	}
}

func (o *oracle) ask(p *Pod, r *Request) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	resp, err := o.client.Do(ctx, upstream.Request{Addr: p.Address, URI: OraclePath + "?api=" + r.API,
		ContentType: "application/json", Body: r.Body.Raw(), Timeout: o.timeout})
	if err != nil {
		o.log.Debug("oracle: asking a pod failed", slog.String("pod", p.Name), slog.Any("error", err))
		return 0
	}
	defer resp.Body.Close()
	var m struct {
		PromptTokens int `json:"prompt_tokens"`
		CachedTokens int `json:"cached_tokens"`
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err == nil && resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(data, &m)
	} else if err == nil {
		err = fmt.Errorf("status %d: %s", resp.StatusCode, data)
	}
	if err != nil || m.PromptTokens <= 0 {
		o.log.Debug("oracle: bad answer", slog.String("pod", p.Name), slog.Any("error", err))
		return 0
	}
	return float64(m.CachedTokens) / float64(m.PromptTokens)
}
