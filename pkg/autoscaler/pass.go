package autoscaler

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// Role is one revision role under the autoscaler: its decider and what
// the pass keeps of it from one pass to the next. A runtime makes it when
// the role appears and hands the same Role to every pass.
type Role struct {
	Key     fleet.Key
	Decider *Decider
	// Ratio bounds a prefill role by its decode role (nil: unbounded).
	Ratio *Ratio
	// Placed is the replicas last applied, summed over variants.
	Placed int
	// Unplaceable is how many replicas the last placement found no room
	// for, and Message what it said of them ("" when all fit).
	Unplaceable int
	Message     string

	rate TokenRate
}

// Observation is a role as its runtime sees it at the start of a pass.
type Observation struct {
	// Ready replicas; requests in flight and buffered at the activators.
	Ready, InFlight, Buffered int
	// Pods are the replicas' last queue-proxy reports.
	Pods []*stats.Stat
	// CPU (cores) and MemoryGiB are the replicas' summed resource use,
	// where the runtime measures it.
	CPU, MemoryGiB float64
	// Variants are where a replica can run, cheapest first, with Current
	// the replicas on each now.
	Variants []Variant
	// Override, when set, replaces the decider's decision (an external
	// scaler's count, a revision no traffic can reach).
	Override *Decision
}

// Observed is one role and its observation.
type Observed struct {
	Role *Role
	Observation
}

// Observer is where a pass's roles come from.
type Observer interface {
	// Observe returns every role to scale in this pass; an error skips the
	// pass.
	Observe(ctx context.Context, now time.Time) ([]Observed, error)
}

// Capacity is what a pass places replicas on.
type Capacity interface {
	// Free returns the accelerators free for the next placement (resource
	// → units; a resource left out has none). The pass does not modify it.
	Free() map[string]int
	// Take records a placement: counts per variant against the variants'
	// Current counts.
	Take(variants []Variant, counts []int)
}

// Reporter is told what a pass does, for logs, events, metrics and
// status. It is called synchronously, from the goroutine running the pass.
type Reporter interface {
	// Decided: a role's signals and its decision (overrides applied),
	// before prefill follows decode.
	Decided(r *Role, sig Signals, dec Decision)
	// Placing: a role's placement, before it is applied (Err is nil).
	Placing(res *Result)
	// Placed: the same after it was applied, or not when unchanged.
	Placed(res *Result)
}

// Result is what a pass did for one role.
type Result struct {
	Role     *Role
	Decision Decision
	// Variants are the observation's; Placement.Counts follows their order.
	Variants  []Variant
	Placement Placement
	// Counts are the non-zero replicas per variant name, as applied.
	Counts map[string]int
	// From is Role.Placed before the pass.
	From int
	// Changed: the placement differs from the variants' Current counts, so
	// it was applied.
	Changed bool
	// NewMessage: the placement leaves replicas out and says so
	// differently from the last one.
	NewMessage bool
	// Err is the apply's error: Role.Placed is kept, so the next pass
	// retries.
	Err error
}

// Pass is one scaling pass over every revision role of a runtime: observe
// every role → Decide → CoupleAll (prefill follows decode) → order by
// Priority → Place on accelerator variants → apply.
type Pass struct {
	Observer Observer
	Capacity Capacity
	Scaler   fleet.VariantScaler
	Reporter Reporter
}

// Run runs the pass. It returns each role's result in the order applied;
// apply errors are in the results, not in the error, which is the
// observer's.
func (p Pass) Run(ctx context.Context, now time.Time) ([]*Result, error) {
	observed, err := p.Observer.Observe(ctx, now)
	if err != nil {
		return nil, err
	}
	byKey := make(map[fleet.Key]*Observed, len(observed))
	want := make(map[fleet.Key]Decision, len(observed))
	for i := range observed {
		o := &observed[i]
		byKey[o.Role.Key] = o
		want[o.Role.Key] = p.decide(o, now)
	}
	CoupleAll(want, func(k fleet.Key) (*Ratio, func(int) int) {
		r := byKey[k].Role
		return r.Ratio, r.Decider.Clamp
	})
	order := slices.SortedFunc(maps.Keys(want), func(a, b fleet.Key) int {
		pa := Priority(byKey[a].Role.Placed, want[a].Desired)
		pb := Priority(byKey[b].Role.Placed, want[b].Desired)
		return cmp.Or(cmp.Compare(pa, pb), cmp.Compare(a.String(), b.String()))
	})
	results := make([]*Result, 0, len(order))
	for _, key := range order {
		results = append(results, p.apply(ctx, byKey[key], want[key]))
	}
	return results, nil
}

// decide records a role's signals and takes its decision.
func (p Pass) decide(o *Observed, now time.Time) Decision {
	r := o.Role
	sig := r.rate.Observe(o.InFlight, o.Buffered, o.Pods, now)
	sig.CPU, sig.MemoryGiB = o.CPU, o.MemoryGiB
	r.Decider.Record(now, sig)
	dec := r.Decider.Decide(now, o.Ready, float64(o.Buffered), float64(o.InFlight))
	if o.Override != nil {
		dec = *o.Override
	}
	p.Reporter.Decided(r, sig, dec)
	return dec
}

// apply places a role's decision on its variants within what is free and
// scales the role when the placement changes.
func (p Pass) apply(ctx context.Context, o *Observed, dec Decision) *Result {
	r := o.Role
	pl := Place(o.Variants, p.Capacity.Free(), dec.Desired)
	p.Capacity.Take(o.Variants, pl.Counts)
	res := &Result{Role: r, Decision: dec, Variants: o.Variants, Placement: pl,
		Counts: CountsOf(o.Variants, pl), From: r.Placed}
	for i, v := range o.Variants {
		res.Changed = res.Changed || pl.Counts[i] != v.Current
	}
	msg := pl.Message()
	res.NewMessage = msg != "" && msg != r.Message // said once per change, not every pass
	r.Message, r.Unplaceable = msg, pl.Unplaceable
	p.Reporter.Placing(res)
	if res.Changed {
		res.Err = p.Scaler.ScaleVariants(ctx, r.Key, res.Counts)
	}
	if res.Err == nil {
		r.Placed = pl.Total()
	}
	p.Reporter.Placed(res)
	return res
}

// CountsOf names a placement's non-zero counts by variant, as
// fleet.VariantScaler takes them.
func CountsOf(variants []Variant, p Placement) map[string]int {
	counts := make(map[string]int, len(variants))
	for i, v := range variants {
		if p.Counts[i] > 0 {
			counts[v.Name] = p.Counts[i]
		}
	}
	return counts
}

// Pool is capacity counted within one pass, from a snapshot of what is
// free (on Kubernetes: the nodes' allocatable less the pods' requests and
// what Deployments asked for and have no pod yet): a placement's growth
// takes from it, its shrinking gives back.
type Pool map[string]int

var _ Capacity = Pool(nil)

// Free implements Capacity.
func (p Pool) Free() map[string]int { return p }

// Take implements Capacity.
func (p Pool) Take(variants []Variant, counts []int) {
	for i, v := range variants {
		for res, n := range v.Need {
			p[res] -= (counts[i] - v.Current) * n // growth takes, shrinking gives back
		}
	}
}

var _ Capacity = (*Inventory)(nil)

// Take implements Capacity: the inventory's devices are taken when a
// replica starts and given back when it has stopped, so a placement takes
// nothing by itself and the next Free sees what the runtime did.
func (inv *Inventory) Take([]Variant, []int) {}
