package scheduler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

var (
	errNoPrompt = errors.New("request has no prompt")
	errReleased = errors.New("request released: its prompt buffers went back to their pools")
)

// Plugin is anything a profile runs.
type Plugin interface {
	Name() string
}

// Filter drops pods a request must not go to. It returns a subset of pods
// (it may reuse the slice); an empty result leaves the decision to the
// scorers over all pods, since refusing a ready pool is worse.
type Filter interface {
	Plugin
	Filter(c *Cycle, pods []*Pod) []*Pod
}

// Scorer rates each pod in [0, 1] (1 best) into out, which has len(pods).
type Scorer interface {
	Plugin
	Score(c *Cycle, pods []*Pod, out []float64)
}

// Preparer is a plugin whose decision needs I/O (a scorer that asks the
// pods, say). PreScore runs for one request before its decision, outside
// the caller's lock, possibly concurrently with other requests' PreScore
// and with Pick, over a snapshot of the pods the request may go to; it
// leaves what the plugin needs in the cycle (Cycle.Write), where the
// decision's Filter or Score reads it (Cycle.Read). It may read the pods'
// Endpoint and Stat, not InFlight, and must not touch state that Filter,
// Score or Picked change.
type Preparer interface {
	Plugin
	PreScore(ctx context.Context, c *Cycle, pods []*Pod)
}

// Observer learns the outcome of a decision (round-robin's position,
// speculative index entries, a router-local prefix table).
type Observer interface {
	Plugin
	Picked(c *Cycle, p *Pod)
}

// Env is what plugins of one pool share: the pool's prefix index fed by the
// queue-proxies, an HTTP client for plugins that ask pods, a logger.
type Env struct {
	Index    *kvindex.Index
	Upstream *upstream.Client
	Log      *slog.Logger
}

// Cycle is one decision: the request and what plugins computed for it.
type Cycle struct {
	Req *Request
	Env *Env
	// Pods is how many pods the decision chose among, before filters.
	Pods int

	matched     [kvindex.MaxPods]int
	former      [kvindex.MaxPods]int
	blocks      int
	matchedDone bool
	prepared    map[string]any // what preparers wrote, by key
}

// Write keeps what a Preparer learned for the decision under key (its
// plugin name), for its Score to Read.
func (c *Cycle) Write(key string, v any) {
	if c.prepared == nil {
		c.prepared = map[string]any{}
	}
	c.prepared[key] = v
}

// Read returns what was written under key, nil when nothing was (the
// request was not prepared, or by a profile without that plugin).
func (c *Cycle) Read(key string) any { return c.prepared[key] }

// PrefixMatch returns, per index slot, the leading prompt blocks the pool's
// pods hold (confirmed or speculated), and the prompt's length in blocks.
// It is computed once per decision.
func (c *Cycle) PrefixMatch() (*[kvindex.MaxPods]int, int) {
	c.match()
	return &c.matched, c.blocks
}

// FormerMatch is PrefixMatch counting also the blocks a pod held until its
// engine evicted them.
func (c *Cycle) FormerMatch() (*[kvindex.MaxPods]int, int) {
	c.match()
	return &c.former, c.blocks
}

func (c *Cycle) match() {
	if c.matchedDone {
		return
	}
	c.matchedDone = true
	if c.Env != nil && c.Env.Index != nil {
		hashes := c.Req.Hashes(c.Env.Index.BlockSize())
		c.blocks = len(hashes)
		if c.blocks > 0 {
			c.Env.Index.MatchWithEvicted(hashes, &c.matched, &c.former)
		}
	}
}

// Factory builds a plugin from its raw config (nil when absent). Errors
// name the offending config field.
type Factory func(config []byte, env *Env) (Plugin, error)

// Registry maps plugin names to factories.
type Registry map[string]Factory

// DefaultPlugins is the routing of a ModelService that sets none.
func DefaultPlugins() []v1alpha1.RoutingPlugin {
	return []v1alpha1.RoutingPlugin{{Name: KVCacheAware, Weight: 3}, {Name: LeastRequest, Weight: 2}}
}

type weighted struct {
	Scorer
	weight float64
}

// Profile is a built plugin set. Pick must not be called concurrently for
// one profile (the activator calls it under its revision lock); PreScore
// may be.
type Profile struct {
	env       *Env
	filters   []Filter
	scorers   []weighted
	preparers []Preparer
	observers []Observer

	cycle   Cycle // the decision in progress, reused (Pick is not concurrent)
	scratch []float64
	totals  []float64
}

// Validate checks a plugin list without keeping the result; errors name
// the field (plugins[i].name, plugins[i].config.x).
func (r Registry) Validate(plugins []v1alpha1.RoutingPlugin) error {
	_, err := r.Build(plugins, &Env{Log: slog.New(slog.DiscardHandler)})
	return err
}

// Build makes a profile of plugins (DefaultPlugins when empty).
func (r Registry) Build(plugins []v1alpha1.RoutingPlugin, env *Env) (*Profile, error) {
	if len(plugins) == 0 {
		plugins = DefaultPlugins()
	}
	p := &Profile{env: env}
	var errs []error
	for i, spec := range plugins {
		field := fmt.Sprintf("plugins[%d]", i)
		f, ok := r[spec.Name]
		if !ok {
			errs = append(errs, fmt.Errorf("%s.name: unknown plugin %q (known: %s)", field, spec.Name, strings.Join(r.Names(), ", ")))
			continue
		}
		if spec.Weight < 0 {
			errs = append(errs, fmt.Errorf("%s.weight: must be >= 0, got %d", field, spec.Weight))
			continue
		}
		var raw []byte
		if spec.Config != nil {
			raw = spec.Config.Raw
		}
		pl, err := f(raw, env)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.config: %w", field, err))
			continue
		}
		used := false
		if fl, ok := pl.(Filter); ok {
			p.filters, used = append(p.filters, fl), true
		}
		if sc, ok := pl.(Scorer); ok {
			w := float64(spec.Weight)
			if w == 0 {
				w = 1
			}
			p.scorers, used = append(p.scorers, weighted{sc, w}), true
		}
		if pr, ok := pl.(Preparer); ok {
			p.preparers = append(p.preparers, pr)
		}
		if ob, ok := pl.(Observer); ok {
			p.observers = append(p.observers, ob)
		}
		if !used {
			errs = append(errs, fmt.Errorf("%s: plugin %q is neither a filter nor a scorer", field, spec.Name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// Names lists the registered plugins, sorted.
func (r Registry) Names() []string {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Prepares reports whether a plugin of the profile is a Preparer: whether
// PreScore has anything to do.
func (p *Profile) Prepares() bool { return len(p.preparers) > 0 }

// PreScore runs the profile's preparers for req over pods (the candidates
// as they are now), without the caller's lock, and returns what they
// prepared, for PickPrepared; nil when no plugin prepares.
func (p *Profile) PreScore(ctx context.Context, req *Request, pods []*Pod) *Cycle {
	if len(p.preparers) == 0 {
		return nil
	}
	c := &Cycle{Req: req, Env: p.env, Pods: len(pods)}
	for _, pr := range p.preparers {
		pr.PreScore(ctx, c, pods)
	}
	c.Req = nil // the decision's own cycle carries the request
	return c
}

// Pick chooses a pod for req among pods (at least one), with nothing
// prepared: a Preparer's Score finds nothing to Read. Ties go to a random
// one of the best.
func (p *Profile) Pick(req *Request, pods []*Pod) *Pod {
	return p.PickPrepared(req, nil, pods)
}

// PickPrepared is Pick with what PreScore prepared for req (nil for
// nothing). Pods that were not in PreScore's snapshot have nothing
// prepared.
func (p *Profile) PickPrepared(req *Request, prepared *Cycle, pods []*Pod) *Pod {
	if len(pods) == 1 && len(p.observers) == 0 {
		return pods[0]
	}
	c := &p.cycle
	*c = Cycle{Req: req, Env: p.env, Pods: len(pods)}
	if prepared != nil {
		c.prepared = prepared.prepared
	}
	defer func() { c.Req, c.prepared = nil, nil }() // keep no request alive past its decision
	cands := pods
	for _, f := range p.filters {
		if out := f.Filter(c, cands); len(out) > 0 {
			cands = out
		}
	}
	var best *Pod
	if len(cands) == 1 {
		best = cands[0]
	} else {
		best = p.score(c, cands)
	}
	for _, o := range p.observers {
		o.Picked(c, best)
	}
	return best
}

func (p *Profile) score(c *Cycle, cands []*Pod) *Pod {
	n := len(cands)
	p.totals = slices.Grow(p.totals[:0], n)[:n]
	p.scratch = slices.Grow(p.scratch[:0], n)[:n]
	clear(p.totals)
	for _, s := range p.scorers {
		clear(p.scratch)
		s.Score(c, cands, p.scratch)
		for i, v := range p.scratch {
			p.totals[i] += s.weight * v
		}
	}
	bestIdx, ties := 0, 1
	for i := 1; i < n; i++ {
		switch {
		case p.totals[i] > p.totals[bestIdx]:
			bestIdx, ties = i, 1
		case p.totals[i] == p.totals[bestIdx]:
			ties++
			if rand.IntN(ties) == 0 { // reservoir: each tie equally likely
				bestIdx = i
			}
		}
	}
	return cands[bestIdx]
}

// decodeConfig decodes a plugin's JSON config strictly into dst.
func decodeConfig(raw []byte, dst any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("invalid config: %w", err)
	}
	return nil
}
