package autoscaler

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Signals is one observation of a revision role, summed (or averaged, for
// KV-cache usage) over its replicas.
type Signals struct {
	// Concurrency is requests in flight plus buffered, as the activators see
	// them (demand at zero included).
	Concurrency float64
	// Buffered is the part of Concurrency waiting for a replica.
	Buffered float64
	// Waiting is the engines' waiting queues, summed.
	Waiting float64
	// KVCacheUsage is the ready replicas' mean KV-cache usage, 0..1.
	KVCacheUsage float64
	// TokensPerSecond is the replicas' summed token throughput.
	TokensPerSecond float64
	// CPU is the replicas' summed CPU use in cores, and MemoryGiB their
	// summed memory use (the resource metrics API, on Kubernetes).
	CPU, MemoryGiB float64
}

// Targets are the per-replica targets; nil ones are not used. With several,
// the largest recommendation wins.
type Targets struct {
	Concurrency     *float64
	WaitingRequests *float64
	KVCacheUsage    *float64
	TokensPerSecond *float64
	CPU             *float64
	MemoryGiB       *float64
}

// Config is one revision role's scaling configuration.
type Config struct {
	MinScale, MaxScale int // MaxScale 0 = unbounded
	InitialScale       int
	// ActivationScale is the least a scale from zero asks for (default 1).
	ActivationScale int
	Targets         Targets

	StableWindow time.Duration // default 60s
	// PanicWindowPercent is the panic window as a share of the stable
	// window (default 10).
	PanicWindowPercent float64
	// PanicThresholdPercent: panic when the panic-window recommendation
	// reaches this share of ready replicas (default 200).
	PanicThresholdPercent float64
	// MaxScaleUpRate and MaxScaleDownRate bound one decision to ready×up
	// and ready÷down (defaults 1000 and 2).
	MaxScaleUpRate, MaxScaleDownRate float64
	// ScaleDownDelay holds the highest recommendation of that long before
	// scaling down (default 0).
	ScaleDownDelay time.Duration
	// ScaleToZeroGracePeriod is how long a role must see no demand before
	// it goes to zero (default 30s).
	ScaleToZeroGracePeriod time.Duration
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.StableWindow == 0 {
		c.StableWindow = 60 * time.Second
	}
	if c.PanicWindowPercent == 0 {
		c.PanicWindowPercent = 10
	}
	if c.PanicThresholdPercent == 0 {
		c.PanicThresholdPercent = 200
	}
	if c.MaxScaleUpRate == 0 {
		c.MaxScaleUpRate = 1000
	}
	if c.MaxScaleDownRate == 0 {
		c.MaxScaleDownRate = 2
	}
	if c.ScaleToZeroGracePeriod == 0 {
		c.ScaleToZeroGracePeriod = 30 * time.Second
	}
	if c.ActivationScale == 0 {
		c.ActivationScale = 1
	}
	if c.Targets == (Targets{}) {
		c.Targets.Concurrency = ptr(8.0)
	}
}

func ptr[T any](v T) *T { return &v }

// Validate checks a defaulted config, naming the field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field string, v any, why string) { errs = append(errs, fmt.Errorf("%s: %v %s", field, v, why)) }
	if c.MinScale < 0 {
		bad("minScale", c.MinScale, "must be >= 0")
	}
	if c.MaxScale != 0 && c.MaxScale < c.MinScale {
		bad("maxScale", c.MaxScale, "must be >= minScale")
	}
	if c.PanicWindowPercent <= 0 || c.PanicWindowPercent > 100 {
		bad("panicWindowPercent", c.PanicWindowPercent, "must be in (0, 100]")
	}
	if c.PanicThresholdPercent <= 100 {
		bad("panicThresholdPercent", c.PanicThresholdPercent, "must be > 100")
	}
	if c.MaxScaleUpRate <= 1 {
		bad("maxScaleUpRate", c.MaxScaleUpRate, "must be > 1")
	}
	if c.MaxScaleDownRate <= 1 {
		bad("maxScaleDownRate", c.MaxScaleDownRate, "must be > 1")
	}
	for name, t := range map[string]*float64{"target.concurrency": c.Targets.Concurrency,
		"target.waitingRequests": c.Targets.WaitingRequests, "target.tokensPerSecond": c.Targets.TokensPerSecond,
		"target.cpu": c.Targets.CPU, "target.memoryGiB": c.Targets.MemoryGiB} {
		if t != nil && *t <= 0 {
			bad(name, *t, "must be > 0")
		}
	}
	if t := c.Targets.KVCacheUsage; t != nil && (*t <= 0 || *t > 1) {
		bad("target.kvCacheUsage", *t, "must be in (0, 1]")
	}
	return errors.Join(errs...)
}

// Decision is the outcome of Decide.
type Decision struct {
	Desired int
	Panic   bool
	// Reason says which signal or rule decided, for events and logs.
	Reason string
}

// Decider decides one revision role's replica count. It is not safe for
// concurrent use.
type Decider struct {
	cfg Config

	concurrency, waiting, kv, tps, cpu, mem window
	panicUntil                              time.Time
	lastDemand                              time.Time
	recent                                  []held // recommendations within ScaleDownDelay
	started                                 bool
	last                                    int // the last decision
}

type held struct {
	at time.Time
	n  int
}

// NewDecider returns a decider for a defaulted, valid config.
func NewDecider(cfg Config, now time.Time) (*Decider, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Decider{cfg: cfg, lastDemand: now}, nil
}

// Resume starts a decider on a replica set that already runs n replicas
// (a controller restart, or a Deployment created at its initial scale):
// no initial-scale decision, and the grace period before zero counts from
// the decider's creation.
func (d *Decider) Resume(n int) {
	d.started = true
	d.last = n
}

// Record adds an observation.
func (d *Decider) Record(t time.Time, s Signals) {
	d.concurrency.record(t, s.Concurrency)
	d.waiting.record(t, s.Waiting)
	d.kv.record(t, s.KVCacheUsage)
	d.tps.record(t, s.TokensPerSecond)
	d.cpu.record(t, s.CPU)
	d.mem.record(t, s.MemoryGiB)
	if s.Concurrency > 0 || s.Buffered > 0 || s.Waiting > 0 {
		d.lastDemand = t
	}
}

// scaleDownHeadroom: a scale-down goes only to a replica count that holds
// the stable window's load with this share to spare. Without it a load
// right at a boundary (16 in flight at a target of 8) scales down to the
// count it saturates, queues, panics back up, and flaps.
const scaleDownHeadroom = 0.1

// recommend returns the largest per-signal recommendation over window w,
// in replicas (not rounded).
func (d *Decider) recommend(now time.Time, w time.Duration, ready int) (float64, string) {
	best, reason := 0.0, "no demand"
	try := func(n float64, why string) {
		if n > best {
			best, reason = n, why
		}
	}
	t := d.cfg.Targets
	if t.Concurrency != nil {
		if avg, ok := d.concurrency.average(now, w); ok {
			try(avg / *t.Concurrency, "concurrency")
		}
	}
	if t.WaitingRequests != nil {
		if avg, ok := d.waiting.average(now, w); ok && avg > 0 {
			// A queue above target asks for the replicas that would drain it.
			try(float64(ready) + avg / *t.WaitingRequests, "waiting requests")
		}
	}
	if t.KVCacheUsage != nil {
		if avg, ok := d.kv.average(now, w); ok {
			try(float64(ready)*avg / *t.KVCacheUsage, "KV-cache usage")
		}
	}
	if t.TokensPerSecond != nil {
		if avg, ok := d.tps.average(now, w); ok {
			try(avg / *t.TokensPerSecond, "tokens per second")
		}
	}
	if t.CPU != nil {
		if avg, ok := d.cpu.average(now, w); ok {
			try(avg / *t.CPU, "CPU")
		}
	}
	if t.MemoryGiB != nil {
		if avg, ok := d.mem.average(now, w); ok {
			try(avg / *t.MemoryGiB, "memory")
		}
	}
	return best, reason
}

// Decide returns the desired replicas given ready ones now; buffered and
// inFlight are the demand at this instant (a scale to zero never happens
// while either is non-zero).
func (d *Decider) Decide(now time.Time, ready int, buffered, inFlight float64) Decision {
	defer d.trim(now)
	demand := buffered > 0 || inFlight > 0
	if !d.started {
		d.started = true
		if ready == 0 && !demand {
			return d.decided(Decision{Desired: d.clamp(max(d.cfg.InitialScale, d.cfg.MinScale)), Reason: "initial scale"})
		}
	}
	r := d.recommendations(now, ready)
	if demand {
		d.lastDemand = now
	}

	// Scale from zero: the first buffered request asks for capacity at once.
	if ready == 0 && demand {
		want := max(r.stable, r.quick, d.cfg.ActivationScale)
		return d.decided(Decision{Desired: d.clamp(want), Reason: "activation: demand at zero"})
	}

	want, reason, panicking := d.panicking(now, ready, r)
	want = d.rateBound(want, ready)
	want = d.holdForDelay(now, want)
	want, reason = d.graceToZero(now, want, ready, demand, reason)
	if c := d.cfg; c.MinScale > 0 && want <= c.MinScale {
		reason = fmt.Sprintf("minScale %d", c.MinScale) // what holds the count
	}
	return d.decided(Decision{Desired: d.clamp(want), Panic: panicking, Reason: reason})
}

// trim drops the samples older than the stable window, the longest
// window a decision reads.
func (d *Decider) trim(now time.Time) {
	for _, w := range []*window{&d.concurrency, &d.waiting, &d.kv, &d.tps, &d.cpu, &d.mem} {
		w.trim(now, d.cfg.StableWindow)
	}
}

// recommendation is the stable and panic windows' recommendations, in
// whole replicas, with the signal that decided each.
type recommendation struct {
	stable, quick             int
	stableReason, quickReason string
}

// recommendations reads both windows. A scale-down keeps headroom (see
// scaleDownHeadroom).
func (d *Decider) recommendations(now time.Time, ready int) recommendation {
	panicWindow := time.Duration(float64(d.cfg.StableWindow) * d.cfg.PanicWindowPercent / 100)
	rawStable, stableReason := d.recommend(now, d.cfg.StableWindow, ready)
	rawQuick, quickReason := d.recommend(now, panicWindow, ready)
	r := recommendation{stable: replicas(rawStable), quick: replicas(rawQuick), stableReason: stableReason, quickReason: quickReason}
	if r.stable < ready && rawStable > 0 {
		r.stable = min(replicas(rawStable/(1-scaleDownHeadroom)), ready)
	}
	return r
}

// panicking enters panic mode when the short window asks for twice (by
// default) what is ready, and holds it for a stable window; in panic the
// count never goes down. It returns the count wanted, the reason and
// whether the decider panics.
func (d *Decider) panicking(now time.Time, ready int, r recommendation) (int, string, bool) {
	c := d.cfg
	reason := r.stableReason
	if ready > 0 && float64(r.quick) >= float64(ready)*c.PanicThresholdPercent/100 {
		if d.panicUntil.Before(now) {
			reason = "panic: " + r.quickReason
		}
		d.panicUntil = now.Add(c.StableWindow)
	}
	if !now.Before(d.panicUntil) {
		return r.stable, reason, false
	}
	return max(r.quick, r.stable, ready), "panic: " + r.quickReason, true
}

// rateBound bounds one decision to ready×MaxScaleUpRate and
// ready÷MaxScaleDownRate.
func (d *Decider) rateBound(want, ready int) int {
	if ready == 0 {
		return want
	}
	up := int(math.Ceil(float64(ready) * d.cfg.MaxScaleUpRate))
	down := int(math.Floor(float64(ready) / d.cfg.MaxScaleDownRate))
	return min(max(want, down), up)
}

// holdForDelay returns the highest recommendation within the scale-down
// delay.
func (d *Decider) holdForDelay(now time.Time, want int) int {
	delay := d.cfg.ScaleDownDelay
	if delay <= 0 {
		return want
	}
	d.recent = append(d.recent, held{now, want})
	i := 0
	for i < len(d.recent) && now.Sub(d.recent[i].at) > delay {
		i++
	}
	d.recent = d.recent[i:]
	for _, h := range d.recent {
		want = max(want, h.n)
	}
	return want
}

// graceToZero lets a role go to zero only after the grace period without
// any demand (replicas still starting included), and never with requests
// buffered or in flight.
func (d *Decider) graceToZero(now time.Time, want, ready int, demand bool, reason string) (int, string) {
	if want != 0 || (ready == 0 && d.last == 0) {
		return want, reason
	}
	if demand || now.Sub(d.lastDemand) < d.cfg.ScaleToZeroGracePeriod {
		return 1, "waiting for the scale-to-zero grace period"
	}
	return 0, "idle for the scale-to-zero grace period"
}

// replicas rounds a recommendation up (a hair below a whole number counts
// as that number).
func replicas(n float64) int { return int(math.Ceil(n - 1e-9)) }

func (d *Decider) decided(dec Decision) Decision {
	d.last = dec.Desired
	return dec
}

func (d *Decider) clamp(n int) int {
	n = max(n, d.cfg.MinScale)
	if d.cfg.MaxScale > 0 {
		n = min(n, d.cfg.MaxScale)
	}
	return n
}
