package activator

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
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

// WithPicker sets the replica picker.
func WithPicker(p Picker) Option { return func(a *Activator) { a.picker = p } }

// Activator is the data-plane entry. Create it with New.
type Activator struct {
	cfg      Config
	log      *slog.Logger
	reg      prometheus.Registerer
	picker   Picker
	onDemand func(fleet.Key)
	metrics  *metrics
	upstream *upstream.Client

	routes atomic.Pointer[table]

	revMu sync.Mutex
	revs  map[fleet.Key]*revision
}

// New returns an activator with no services.
func New(cfg Config, opts ...Option) (*Activator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("activator config: %w", err)
	}
	a := &Activator{cfg: cfg, log: slog.Default(), picker: LeastRequest{}, revs: map[fleet.Key]*revision{}}
	for _, o := range opts {
		o(a)
	}
	a.metrics = newMetrics(a.reg, a)
	a.upstream = upstream.New()
	a.routes.Store(&table{byModel: map[string]*service{}})
	return a, nil
}

// SetServices replaces the routing table. Revisions no longer referenced are
// forgotten; their buffered requests keep waiting until they time out.
func (a *Activator) SetServices(svcs []ServiceConfig) error {
	t := &table{byModel: make(map[string]*service, len(svcs))}
	keep := map[fleet.Key]bool{}
	for _, sc := range svcs {
		if err := sc.validate(); err != nil {
			return err
		}
		if _, dup := t.byModel[sc.Model]; dup {
			return fmt.Errorf("service %q: model %q is served by another service", sc.Name, sc.Model)
		}
		split, err := traffic.New(sc.Traffic)
		if err != nil {
			return fmt.Errorf("service %q: %w", sc.Name, err)
		}
		s := &service{cfg: sc, split: split, revisions: map[string]*revisionRoute{}}
		for _, rc := range sc.Revisions {
			key := sc.Key(rc.Name)
			keep[key] = true
			rev := a.revisionFor(key, rc.ContainerConcurrency)
			s.revisions[rc.Name] = &revisionRoute{cfg: rc, rev: rev,
				ok:       a.metrics.requests.WithLabelValues(sc.Name, rc.Name, "200"),
				duration: a.metrics.duration.WithLabelValues(sc.Name, rc.Name)}
		}
		t.byModel[sc.Model] = s
	}
	a.revMu.Lock()
	for k := range a.revs {
		if !keep[k] {
			delete(a.revs, k)
		}
	}
	a.revMu.Unlock()
	a.routes.Store(t)
	return nil
}

func (a *Activator) revisionFor(key fleet.Key, capacity int) *revision {
	a.revMu.Lock()
	defer a.revMu.Unlock()
	if r, ok := a.revs[key]; ok {
		r.setCapacity(capacity)
		return r
	}
	r := newRevision(key, capacity, a.picker, a.onDemand)
	a.revs[key] = r
	return r
}

func (a *Activator) lookupRevision(key fleet.Key) *revision {
	a.revMu.Lock()
	defer a.revMu.Unlock()
	return a.revs[key]
}

// SetEndpoints replaces the ready endpoints of a revision; buffered requests
// are released to them at once. Unknown revisions are ignored.
func (a *Activator) SetEndpoints(key fleet.Key, eps []fleet.Endpoint) {
	if r := a.lookupRevision(key); r != nil {
		for _, addr := range r.setEndpoints(eps) {
			a.upstream.CloseIdle(addr) // nothing will ask for a departed replica again
		}
	}
}

// Load returns the load of a revision; ok is false when it is unknown.
func (a *Activator) Load(key fleet.Key) (Load, bool) {
	r := a.lookupRevision(key)
	if r == nil {
		return Load{}, false
	}
	return r.load(), true
}

// Models lists the model names served.
func (a *Activator) Models() []string {
	t := a.routes.Load()
	out := make([]string, 0, len(t.byModel))
	for m := range t.byModel {
		out = append(out, m)
	}
	return out
}
