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

	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// balance is how much load imbalance a prefix match may cause.
type balance struct {
	slack    float64 // requests
	relSlack float64 // fraction of the least-loaded pod's load
}

// score discounts a prefix score on a pod whose load exceeds the least
// loaded pod's by more than slack + relSlack*minLoad: in full up to that
// allowance, then in proportion allowance/excess. One hot prefix thus fills
// its pod only until the others are that much emptier; then the prefix is
// computed there too and the pods share it. The allowance grows with load
// because a continuous-batching engine with 100 sequences running takes a
// few more at little cost, while a cold prefill on another pod costs a full
// prompt of compute and evicts someone else's prefix.
func (b balance) score(frac, load, minLoad float64) float64 {
	allow := b.slack + b.relSlack*minLoad
	excess := load - minLoad
	if excess <= allow {
		return frac
	}
	return frac * allow / excess
}

func balanceOf(slack, relSlack *float64) (balance, error) {
	b := balance{slack: 32, relSlack: 2}
	if slack != nil {
		if *slack < 0 {
			return b, fmt.Errorf("balanceSlack: must be >= 0, got %g", *slack)
		}
		b.slack = *slack
	}
	if relSlack != nil {
		if *relSlack < 0 {
			return b, fmt.Errorf("balanceRelativeSlack: must be >= 0, got %g", *relSlack)
		}
		b.relSlack = *relSlack
	}
	return b, nil
}

// KVCacheAwareConfig configures the kv-cache-aware scorer.
type KVCacheAwareConfig struct {
	// SpeculativeTTL is how long a decision's speculative index entry lives
	// when the pod's queue-proxy does not confirm it first. Default 30s: a
	// queue-proxy that follows its engine's KV events confirms a prompt's
	// blocks only once the engine has computed them, after the prompt's
	// wait in the engine's queue, which under load is seconds; an entry
	// that lapses before sends the prompt's next same-prefix requests
	// elsewhere, to compute the prefix a second time. (A queue-proxy that
	// models its cache confirms at once.)
	SpeculativeTTL *metav1.Duration `json:"speculativeTTL,omitempty"`
	// BalanceSlack and BalanceRelativeSlack set the load above the
	// least-loaded pod up to which a prefix match counts in full:
	// balanceSlack + balanceRelativeSlack x that pod's load. Defaults 32
	// requests and 2 (up to three times the least-loaded pod's load, plus
	// 32). Load counts the engine's waiting queue, so a pod whose engine
	// queues reaches the allowance sooner.
	BalanceSlack         *float64 `json:"balanceSlack,omitempty"`
	BalanceRelativeSlack *float64 `json:"balanceRelativeSlack,omitempty"`
	// EvictedAffinity is how much a pod that held the prompt's prefix until
	// its engine evicted it counts, as a fraction of a pod that holds it
	// now, while no pod holds as much of it. Under cache pressure it sends a
	// prefix that was evicted everywhere back to the pod that had it, so
	// the pods keep dividing the prefixes between them instead of each
	// recomputing whichever prefix it is sent. Default 0.9; 0 turns it off.
	EvictedAffinity *float64 `json:"evictedAffinity,omitempty"`
}

// kvCacheAware scores the fraction of the prompt's blocks a pod holds
// according to the index its queue-proxies feed (plus speculative entries),
// or, while no pod holds as much, EvictedAffinity times the fraction it held
// before evictions; discounted by load (see balance).
type kvCacheAware struct {
	ttl     time.Duration
	bal     balance
	evicted float64
}

func newKVCacheAware(raw []byte, _ *Env) (Plugin, error) {
	var cfg KVCacheAwareConfig
	if err := decodeConfig(raw, &cfg); err != nil {
		return nil, err
	}
	k := &kvCacheAware{ttl: 30 * time.Second, evicted: 0.9}
	if cfg.EvictedAffinity != nil {
		if a := *cfg.EvictedAffinity; a < 0 || a > 1 {
			return nil, fmt.Errorf("evictedAffinity: must be within [0, 1], got %g", a)
		}
		k.evicted = *cfg.EvictedAffinity
	}
	if cfg.SpeculativeTTL != nil {
		if cfg.SpeculativeTTL.Duration <= 0 {
			return nil, fmt.Errorf("speculativeTTL: must be > 0, got %s", cfg.SpeculativeTTL.Duration)
		}
		k.ttl = cfg.SpeculativeTTL.Duration
	}
	var err error
	k.bal, err = balanceOf(cfg.BalanceSlack, cfg.BalanceRelativeSlack)
	return k, err
}

func (*kvCacheAware) Name() string { return KVCacheAware }

func (k *kvCacheAware) Score(c *Cycle, pods []*Pod, out []float64) {
	matched, blocks := c.PrefixMatch()
	if blocks == 0 {
		return
	}
	former, _ := c.FormerMatch()
	held := 0 // the longest prefix a pod holds now
	for _, p := range pods {
		if p.Slot >= 0 {
			held = max(held, matched[p.Slot])
		}
	}
	lo, _ := loadRange(pods)
	for i, p := range pods {
		if p.Slot < 0 {
			continue
		}
		m := float64(matched[p.Slot])
		if f := former[p.Slot]; f > held {
			// No pod holds as much as this one held before evictions.
			m = max(m, k.evicted*float64(f))
		}
		out[i] = k.bal.score(m/float64(blocks), p.Load(), lo)
	}
}

// Picked speculates that p will hold the prompt's blocks. With one pod to
// choose from there is nothing to steer: that pod's own KV events bring the
// same blocks into the index within a flush interval (its queue-proxy
// models a request's blocks when it sends it), so the prompt is not even
// hashed.
func (k *kvCacheAware) Picked(c *Cycle, p *Pod) {
	if c.Env == nil || c.Env.Index == nil || p.Slot < 0 || c.Pods < 2 {
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
	// BalanceSlack and BalanceRelativeSlack as for kv-cache-aware.
	BalanceSlack         *float64 `json:"balanceSlack,omitempty"`
	BalanceRelativeSlack *float64 `json:"balanceRelativeSlack,omitempty"`
	// SpeculativeTTL is how long the oracle remembers where it sent a
	// prompt that the engine may not have computed yet (the true cache shows
	// a prefix only once its prefill ran, which under load can be seconds
	// after the decision). Default 30s.
	SpeculativeTTL *metav1.Duration `json:"speculativeTTL,omitempty"`
}

// oracle asks every candidate's engine (the simulator's /sim/prefix-match,
// through the queue-proxy) how much of the prompt it holds right now: the
// true cache state, the physical limit of cache-aware routing. Like
// kv-cache-aware it also remembers where it just sent prompts that are not
// computed yet (its own speculative index, no queue-proxy reports), and it
// balances load the same way, so the two differ only in what they know of
// the caches. For benchmarks against the simulator only: it costs a round
// trip per pod per decision, made in PreScore, before the decision and
// outside the activator's lock; a pod that was not asked (it became a
// candidate after PreScore) scores as one that did not answer.
type oracle struct {
	timeout time.Duration
	ttl     time.Duration
	bal     balance
	client  *upstream.Client
	log     *slog.Logger
	pending *kvindex.Index // speculation only
	slots   map[string]int
}

func newOracle(raw []byte, env *Env) (Plugin, error) {
	var cfg OracleConfig
	if err := decodeConfig(raw, &cfg); err != nil {
		return nil, err
	}
	o := &oracle{timeout: 200 * time.Millisecond, ttl: 30 * time.Second, client: env.Upstream, log: env.Log,
		pending: kvindex.New(env.Log), slots: map[string]int{}}
	if cfg.SpeculativeTTL != nil {
		if cfg.SpeculativeTTL.Duration <= 0 {
			return nil, fmt.Errorf("speculativeTTL: must be > 0, got %s", cfg.SpeculativeTTL.Duration)
		}
		o.ttl = cfg.SpeculativeTTL.Duration
	}
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
	o.bal, err = balanceOf(cfg.BalanceSlack, cfg.BalanceRelativeSlack)
	return o, err
}

var (
	_ Scorer   = (*oracle)(nil)
	_ Preparer = (*oracle)(nil)
	_ Observer = (*oracle)(nil)
)

func (*oracle) Name() string { return Oracle }

// OraclePath is where the simulator answers prefix-match questions.
const OraclePath = "/sim/prefix-match"

// oracleAnswers are the pods' answers of one decision: the share of the
// prompt each pod's engine holds, by pod name.
type oracleAnswers map[string]float64

// PreScore asks every pod, in parallel, how much of the prompt its engine
// holds, for Score.
func (o *oracle) PreScore(ctx context.Context, c *Cycle, pods []*Pod) {
	if c.Req.API != APIChat && c.Req.API != APICompletions {
		return
	}
	held := make([]float64, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { held[i] = o.ask(ctx, p, c.Req) })
	}
	wg.Wait()
	answers := make(oracleAnswers, len(pods))
	for i, p := range pods {
		answers[p.Name] = held[i]
	}
	c.Write(Oracle, answers)
}

func (o *oracle) Score(c *Cycle, pods []*Pod, out []float64) {
	if c.Req.API != APIChat && c.Req.API != APICompletions {
		return
	}
	answers, _ := c.Read(Oracle).(oracleAnswers)
	for i, p := range pods {
		out[i] = answers[p.Name]
	}
	hashes := c.Req.Hashes(oracleBlockSize)
	var pend [kvindex.MaxPods]int
	if len(hashes) > 0 {
		o.pending.Match(hashes, &pend)
	}
	lo, _ := loadRange(pods)
	for i, p := range pods {
		if slot, ok := o.slot(p.Name); ok && len(hashes) > 0 {
			out[i] = max(out[i], float64(pend[slot])/float64(len(hashes)))
		}
		out[i] = o.bal.score(out[i], p.Load(), lo)
	}
}

// oracleBlockSize is the block size of the oracle's own speculative index.
const oracleBlockSize = 16

// slot returns the pod's slot in the speculative index, adding it.
func (o *oracle) slot(name string) (int, bool) {
	s, ok := o.slots[name]
	if !ok {
		s = o.pending.AddPod(name)
		o.pending.Apply(stats.KVEvent{Pod: name, BlockSize: oracleBlockSize, Reset: true})
		o.slots[name] = s
	}
	return s, s >= 0
}

func (o *oracle) Picked(c *Cycle, p *Pod) {
	if slot, ok := o.slot(p.Name); ok {
		o.pending.Speculate(slot, c.Req.Hashes(oracleBlockSize), o.ttl)
	}
}

func (o *oracle) ask(ctx context.Context, p *Pod, r *Request) float64 {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
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
