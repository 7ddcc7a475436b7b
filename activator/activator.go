package activator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// Config of an activator. Zero values take the defaults.
type Config struct {
	// MaxBodyBytes limits a request body (413 above it). Default 32 MiB.
	MaxBodyBytes int64
	// MaxBuffered limits requests buffered per revision (503 above it). Default 10,000.
	MaxBuffered int
	// BufferTimeout bounds how long a request waits for a ready replica (then 503). Default 5m.
	BufferTimeout time.Duration
	// RequestTimeout bounds one forwarded request when the revision sets none. Default 10m.
	RequestTimeout time.Duration
	// MaxAttempts is how many replicas a request may try before its first byte. Default 3.
	MaxAttempts int
	// MaxWebSocketInFlight bounds concurrent requests on one WebSocket. Default 128.
	MaxWebSocketInFlight int
	// AllowedOrigins are the browser origins, besides the API's own, whose
	// pages may open a WebSocket (each a full origin such as
	// https://app.example.com: scheme and host, optional port, no path).
	// "*" admits every origin: an explicit opt-in that lets any web page a
	// user visits drive the API with the user's network access. Requests
	// without an Origin header (programs, not browsers) are always admitted.
	// Default none: same origin only.
	AllowedOrigins []string
	// OutlierConsecutiveFailures is how many failures in a row (connection
	// errors, 502/503/504, responses broken before their end) eject a
	// replica from picking, as Envoy's outlier detection does. Default 5;
	// 0 turns ejection off.
	OutlierConsecutiveFailures int
	// OutlierBaseEjection is how long a first ejection lasts; each further
	// ejection of the same replica lasts this times its ejection count.
	// Default 30s.
	OutlierBaseEjection time.Duration
	// OutlierMaxEjection caps one ejection. Default 5m.
	OutlierMaxEjection time.Duration
	// OutlierMaxEjectionPercent caps the share of a revision role's ready
	// replicas ejected at once; one replica may always be ejected whatever
	// the share. Default 10.
	OutlierMaxEjectionPercent int
	// SaturationWaiting, when > 0, also counts a replica as saturated
	// (requests wait in the activator's fair queue rather than in its
	// engine's) while its engine's waiting queue, as last reported plus
	// the requests handed to it since less those that finished, is at or
	// above it. 0: off (containerConcurrency alone saturates).
	SaturationWaiting int
	// SaturationKVUsage, when > 0, also counts a replica as saturated while
	// its engine's KV-cache usage (0..1), as last reported plus the
	// estimated tokens handed to it since, is at or above it. 0: off.
	SaturationKVUsage float64
	// FirstComeFirstServed turns fair queueing off: tenants' requests wait
	// in one first-come, first-served line, whatever their priority and
	// weight (the baseline fair queueing is measured against). Default
	// false.
	FirstComeFirstServed bool
	// PriorityHeadroom is how many slots of each pod's containerConcurrency
	// are kept for critical requests and for tenants under their share of
	// the revision (fairness.go); 0: none, every slot goes in queue order.
	// Capped at containerConcurrency-1. Default 1.
	PriorityHeadroom int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxBodyBytes:         32 << 20,
		MaxBuffered:          10000,
		BufferTimeout:        5 * time.Minute,
		RequestTimeout:       10 * time.Minute,
		MaxAttempts:          3,
		MaxWebSocketInFlight: 128,

		OutlierConsecutiveFailures: 5,
		OutlierBaseEjection:        30 * time.Second,
		OutlierMaxEjection:         5 * time.Minute,
		OutlierMaxEjectionPercent:  10,

		PriorityHeadroom: 1,
	}
}

// Validate checks the config, naming the bad field.
func (c Config) Validate() error {
	var errs []error
	if c.MaxBodyBytes <= 0 {
		errs = append(errs, fmt.Errorf("max-body-bytes: must be > 0, got %d", c.MaxBodyBytes))
	}
	if c.MaxBuffered <= 0 {
		errs = append(errs, fmt.Errorf("max-buffered: must be > 0, got %d", c.MaxBuffered))
	}
	if c.BufferTimeout <= 0 {
		errs = append(errs, fmt.Errorf("buffer-timeout: must be > 0, got %s", c.BufferTimeout))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("request-timeout: must be > 0, got %s", c.RequestTimeout))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("max-attempts: must be >= 1, got %d", c.MaxAttempts))
	}
	if c.MaxWebSocketInFlight < 1 {
		errs = append(errs, fmt.Errorf("max-websocket-in-flight: must be >= 1, got %d", c.MaxWebSocketInFlight))
	}
	for _, o := range c.AllowedOrigins {
		if err := validateOrigin(o); err != nil {
			errs = append(errs, fmt.Errorf("allowed-origins: %w", err))
		}
	}
	if c.OutlierConsecutiveFailures < 0 {
		errs = append(errs, fmt.Errorf("outlier-consecutive-failures: must be >= 0 (0: off), got %d", c.OutlierConsecutiveFailures))
	}
	if c.OutlierBaseEjection <= 0 {
		errs = append(errs, fmt.Errorf("outlier-base-ejection: must be > 0, got %s", c.OutlierBaseEjection))
	}
	if c.OutlierMaxEjection < c.OutlierBaseEjection {
		errs = append(errs, fmt.Errorf("outlier-max-ejection: must be >= outlier-base-ejection (%s), got %s", c.OutlierBaseEjection, c.OutlierMaxEjection))
	}
	if c.OutlierMaxEjectionPercent < 0 || c.OutlierMaxEjectionPercent > 100 {
		errs = append(errs, fmt.Errorf("outlier-max-ejection-percent: must be in [0, 100], got %d", c.OutlierMaxEjectionPercent))
	}
	if c.PriorityHeadroom < 0 {
		errs = append(errs, fmt.Errorf("priority-headroom: must be >= 0 (0: off), got %d", c.PriorityHeadroom))
	}
	if c.SaturationWaiting < 0 {
		errs = append(errs, fmt.Errorf("saturation-waiting: must be >= 0 (0: off), got %d", c.SaturationWaiting))
	}
	if !(c.SaturationKVUsage >= 0 && c.SaturationKVUsage <= 1) { // NaN too
		errs = append(errs, fmt.Errorf("saturation-kv-usage: must be in [0, 1] (0: off), got %g", c.SaturationKVUsage))
	}
	return errors.Join(errs...)
}

// Option configures an Activator.
type Option func(*Activator)

// WithOnDemand sets the hook called when a request is buffered for a
// revision with no eligible replica: the scaler's cue to scale up at once.
// It must not block.
func WithOnDemand(fn func(fleet.Key)) Option { return func(a *Activator) { a.onDemand = fn } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(a *Activator) { a.log = l } }

// WithRegisterer registers the activator's metrics.
func WithRegisterer(r prometheus.Registerer) Option { return func(a *Activator) { a.reg = r } }

// WithRegistry sets the scheduler plugins that spec.routing may name
// (default scheduler.DefaultRegistry).
func WithRegistry(r scheduler.Registry) Option { return func(a *Activator) { a.registry = r } }

// WithLimits sets the limits of the listener the activator serves on:
// how long a request body may take to arrive (408 past it), how long a
// write to a client may block (a stream nobody reads is cut off), and the
// memory budget shared by the bodies held at once (503 when full; the
// activators of one process share one). Default: httpserver.DefaultLimits
// with a budget of its own.
func WithLimits(l httpserver.Limits, budget *httpserver.Budget) Option {
	return func(a *Activator) {
		a.bodies.Timeout, a.bodies.Budget, a.writeTimeout = l.BodyReadTimeout, budget, l.WriteTimeout
	}
}

// WithStatsStreams sets whether the activator follows every ready pod's
// queue-proxy stats stream (engine load, KV events for the prefix index).
// Default true; tests with plain HTTP backends turn it off.
func WithStatsStreams(on bool) Option { return func(a *Activator) { a.followStats = on } }

// Activator is the data-plane entry. Create it with New.
type Activator struct {
	cfg         Config
	log         *slog.Logger
	reg         prometheus.Registerer
	registry    scheduler.Registry
	followStats bool
	onDemand    func(fleet.Key)
	metrics     *metrics
	upstream    *upstream.Client   // the scheduler's plugins (the benchmark-only oracle)
	pools       pools              // the data path's connections: forwarded requests, prefills, tokenizations (upconn.go)
	dog         *upstream.Watchdog // looks at the clients of waiting requests (clientctx.go, upconn.go)
	tokenizers  tokenizers         // tokenizer files of revisions, by path
	tokenizing  chan struct{}      // engine tokenizations in flight, at most maxTokenizing
	bodies      httpserver.BodyReader
	// writeTimeout bounds each write to a client (httpserver.ClientWriter).
	writeTimeout time.Duration
	origins      originPolicy     // who may open a WebSocket
	now          func() time.Time // the clock of outlier ejections (tests set their own)

	routes  atomic.Pointer[table]
	tenants atomic.Pointer[tenantTable] // nil or empty: the API is open (auth.go)
	// limiter enforces the tenants' limit rules; nil: not enforced
	// (ratelimit.go).
	limiter *ratelimit.Limiter
	// authTimeout bounds the wait for a WebSocket's auth message (tests
	// set their own).
	authTimeout time.Duration

	ctx    context.Context // lives until Close: the pods' stats subscriptions
	cancel context.CancelFunc

	revMu sync.Mutex
	revs  map[fleet.Key]*revision
}

// New returns an activator with no services.
func New(cfg Config, opts ...Option) (*Activator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("activator config: %w", err)
	}
	limits := httpserver.DefaultLimits()
	a := &Activator{cfg: cfg, log: slog.Default(), registry: scheduler.DefaultRegistry(), followStats: true,
		dog:          upstream.NewWatchdog(checkInterval),
		revs:         map[fleet.Key]*revision{},
		bodies:       httpserver.BodyReader{Timeout: limits.BodyReadTimeout, Budget: httpserver.NewBudget(limits.BodyBudget)},
		writeTimeout: limits.WriteTimeout, tokenizing: make(chan struct{}, maxTokenizing)}
	a.origins, a.now, a.authTimeout = newOriginPolicy(cfg.AllowedOrigins), time.Now, wsAuthTimeout
	a.pools.dog = a.dog
	for _, o := range opts {
		o(a)
	}
	a.bodies.MaxBytes = cfg.MaxBodyBytes
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.metrics = newMetrics(a.reg, a)
	a.upstream = upstream.New()
	a.routes.Store(&table{byModel: map[string]*service{}, byAdapter: map[string]*service{}})
	return a, nil
}

// SetServices replaces the routing table. Revisions no longer referenced are
// forgotten; their buffered requests keep waiting until they time out.
func (a *Activator) SetServices(svcs []ServiceConfig) error {
	t := &table{byModel: make(map[string]*service, len(svcs)), byAdapter: map[string]*service{}}
	keep := map[fleet.Key]bool{}
	for _, sc := range svcs {
		if err := sc.validate(); err != nil {
			return err
		}
		if err := a.registry.Validate(sc.Routing); err != nil {
			return fmt.Errorf("service %q: spec.routing.%w", sc.Name, err)
		}
		if _, _, dup := t.lookup(sc.Model); dup {
			return fmt.Errorf("service %q: model %q is served by another service", sc.Name, sc.Model)
		}
		for _, ad := range sc.LoRAAdapters {
			if _, _, dup := t.lookup(ad); dup || ad == sc.Model {
				return fmt.Errorf("service %q: LoRA adapter %q is served by another service", sc.Name, ad)
			}
		}
		split, err := traffic.New(sc.Traffic)
		if err != nil {
			return fmt.Errorf("service %q: %w", sc.Name, err)
		}
		s := &service{cfg: sc, split: split, revisions: map[string]*revisionRoute{}}
		for _, rc := range sc.Revisions {
			key := sc.Key(rc.Name)
			var prefill *revision
			if rc.Disaggregated {
				key = sc.RoleKey(rc.Name, fleet.RoleDecode)
				pk := sc.RoleKey(rc.Name, fleet.RolePrefill)
				keep[pk] = true
				var err error
				if prefill, err = a.revisionFor(pk, rc.ContainerConcurrency, sc.Routing); err != nil {
					return fmt.Errorf("service %q: spec.routing.%w", sc.Name, err)
				}
			}
			keep[key] = true
			rev, err := a.revisionFor(key, rc.ContainerConcurrency, sc.Routing)
			if err != nil {
				return fmt.Errorf("service %q: spec.routing.%w", sc.Name, err)
			}
			var tok textTokenizer
			if rc.Tokenizer.Type == v1alpha1.TokenizerFile {
				if tok, err = a.tokenizers.load(rc.Tokenizer.Path); err != nil {
					// Routing still works, without prefix knowledge of the engine's cache.
					a.log.Error("tokenizer not loaded; routing without the engine's tokens", slog.String("service", sc.Name),
						slog.String("revision", rc.Name), slog.String("path", rc.Tokenizer.Path), slog.Any("error", err))
				}
			}
			s.revisions[rc.Name] = &revisionRoute{cfg: rc, rev: rev, prefill: prefill, tok: tok,
				ok:       a.metrics.requests.WithLabelValues(sc.Namespace, sc.Name, rc.Name, "200"),
				duration: a.metrics.duration.WithLabelValues(sc.Namespace, sc.Name, rc.Name)}
		}
		t.byModel[sc.Model] = s
		for _, ad := range sc.LoRAAdapters {
			t.byAdapter[ad] = s
		}
	}
	a.revMu.Lock()
	for k, r := range a.revs {
		if !keep[k] {
			r.close()
			delete(a.revs, k)
		}
	}
	a.revMu.Unlock()
	a.routes.Store(t)
	return nil
}

func (a *Activator) revisionFor(key fleet.Key, capacity int, routing []v1alpha1.RoutingPlugin) (*revision, error) {
	routingKey, err := json.Marshal(routing)
	if err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	a.revMu.Lock()
	r, ok := a.revs[key]
	if !ok {
		var follow follower
		if a.followStats {
			follow = followStats(a.log)
		}
		r = newRevision(a.ctx, key, a.log, a.onDemand, follow, outlierConfigOf(a.cfg, a.now)).withQueueing(queueingOf(a.cfg))
	}
	a.revMu.Unlock()
	var buildErr error
	r.configure(capacity, string(routingKey), func() *scheduler.Profile {
		p, err := a.registry.Build(routing, &scheduler.Env{Index: r.index, Upstream: a.upstream,
			Log: a.log.With(slog.String("revision", key.Revision))})
		buildErr = err
		return p
	})
	if buildErr != nil { // validated before: cannot happen
		return nil, buildErr
	}
	a.revMu.Lock()
	if _, ok := a.revs[key]; !ok {
		a.revs[key] = r
	}
	a.revMu.Unlock()
	return r, nil
}

func (a *Activator) lookupRevision(key fleet.Key) *revision {
	a.revMu.Lock()
	defer a.revMu.Unlock()
	return a.revs[key]
}

// Loads returns the load of every revision role the activator knows.
func (a *Activator) Loads() map[fleet.Key]Load {
	a.revMu.Lock()
	revs := make(map[fleet.Key]*revision, len(a.revs))
	for k, r := range a.revs {
		revs[k] = r
	}
	a.revMu.Unlock()
	out := make(map[fleet.Key]Load, len(revs))
	for k, r := range revs {
		out[k] = r.load()
	}
	return out
}

// Report is what the activator tells the autoscaler: the load of every
// revision role it knows, under its name.
func (a *Activator) Report(name string) stats.ActivatorReport {
	r := stats.ActivatorReport{Activator: name, Time: time.Now()}
	for k, l := range a.Loads() {
		r.Loads = append(r.Loads, stats.RevisionLoad{Namespace: k.Namespace, Service: k.Service, Revision: k.Revision,
			Role: k.Role, InFlight: l.InFlight, Buffered: l.Buffered, Ready: l.Ready})
	}
	return r
}

// SetEndpoints replaces the ready endpoints of a revision; buffered requests
// are released to them at once. Unknown revisions are ignored.
func (a *Activator) SetEndpoints(key fleet.Key, eps []fleet.Endpoint) {
	if r := a.lookupRevision(key); r != nil {
		for _, addr := range r.setEndpoints(eps) {
			a.upstream.CloseIdle(addr) // nothing will ask for a departed replica again
			a.pools.forget(addr)
		}
	}
}

// Close stops following the queue-proxies' stats streams. Serving goes on.
func (a *Activator) Close() {
	a.cancel()
	a.revMu.Lock()
	defer a.revMu.Unlock()
	for _, r := range a.revs {
		r.close()
	}
}

// PodStat returns the latest stats report of a ready pod of a revision, nil
// when unknown or not yet reported.
func (a *Activator) PodStat(key fleet.Key, pod string) *stats.Stat {
	if r := a.lookupRevision(key); r != nil {
		if p := r.pod(pod); p != nil {
			return p.Stat()
		}
	}
	return nil
}

// PodStats returns the latest stats report of each ready pod of a revision
// that has reported.
func (a *Activator) PodStats(key fleet.Key) []*stats.Stat {
	r := a.lookupRevision(key)
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*stats.Stat, 0, len(r.pods))
	for _, p := range r.pods {
		if s := p.Stat(); s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Index returns the prefix index of a revision (nil when unknown).
func (a *Activator) Index(key fleet.Key) *kvindex.Index {
	if r := a.lookupRevision(key); r != nil {
		return r.index
	}
	return nil
}

// Load returns the load of a revision; ok is false when it is unknown.
func (a *Activator) Load(key fleet.Key) (Load, bool) {
	r := a.lookupRevision(key)
	if r == nil {
		return Load{}, false
	}
	return r.load(), true
}

// PickRevision makes one routing decision for a model name (with an
// optional tag) as a request would, without sending anything: the revision
// chosen. For tests and diagnostics.
func (a *Activator) PickRevision(model, tag string) (string, bool) {
	s, _, ok := a.routes.Load().lookup(model)
	if !ok {
		return "", false
	}
	if tag != "" {
		return s.split.Tagged(tag)
	}
	return s.split.Pick(rand.IntN(100)), true
}
