package queueproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
	"github.com/kvasir-serving/kvasir/queueproxy/health"
)

// Reserved paths served by the queue-proxy itself.
const (
	ReservedPrefix = "/kvasir/"
	ReadyPath      = "/kvasir/ready"
	MetricsPath    = "/kvasir/metrics"
)

// Proxy is the queue-proxy of one engine. Create it with New, serve
// Handler, and keep Run going for as long as it serves.
type Proxy struct {
	cfg       Config
	log       *slog.Logger
	engine    *url.URL
	transport *http.Transport
	// sync carries measured requests (chat and completions, body in memory)
	// to a plain-http engine without net/http's per-request goroutine
	// hand-offs; nil for https engines.
	sync    *upstream.Client
	limiter *limiter // nil when unlimited
	metrics *metrics
	hub     *hub
	kv      *kvModel    // the KV model; nil with --kv-model=false or KV events
	kvf     *kvFollower // the engine's KV events; nil without --kv-events-endpoint
	kvs     kvSource    // kv or kvf, whichever streams KV events; nil for none

	// engineAdapters are the LoRA adapters the engine's model list showed
	// last (read-only once stored); nil before the first list.
	engineAdapters atomic.Pointer[map[string]struct{}]
	upgrader       websocket.Upgrader
	bodies         httpserver.BodyReader // measured requests' bodies
	handler        http.Handler

	health   *health.State // readiness, drain, proxy handlers running
	inFlight atomic.Int64

	mu         sync.Mutex // guards totals and engine
	totals     totals
	engineStat stats.EngineStat
}

// totals are the cumulative counters of stats.Stat.
type totals struct {
	requests, errors                             uint64
	promptTokens, cachedTokens, completionTokens uint64
	ttftSum, itlSum                              float64
	ttftCount, itlCount                          uint64
}

// New builds a Proxy from a config, which it validates. A nil logger discards.
func New(cfg Config, logger *slog.Logger) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("queue-proxy config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	engine, err := url.Parse(cfg.EngineURL)
	if err != nil { // Validate parsed it already
		return nil, fmt.Errorf("--engine-url: %w", err)
	}
	p := &Proxy{
		cfg:       cfg,
		log:       logger,
		engine:    engine,
		transport: newTransport(),
		sync:      newSyncClient(engine),
		hub:       newHub(logger),
		upgrader:  websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 4096},
		bodies: httpserver.BodyReader{MaxBytes: cfg.MaxBodyBytes, Timeout: cfg.Limits.BodyReadTimeout,
			Budget: httpserver.NewBudget(cfg.Limits.BodyBudget)},
	}
	p.health = health.New(&health.HTTPProber{
		Transport: p.transport, URL: p.engineURL(cfg.EngineHealthPath), Timeout: cfg.ProbeTimeout, Log: logger,
	}, scrapeWarmer{p}, logger)
	if cfg.ContainerConcurrency > 0 {
		p.limiter = newLimiter(cfg.ContainerConcurrency, cfg.queueDepth())
	}
	p.metrics = newMetrics(p)
	switch {
	case cfg.KVEventsEndpoint != "":
		p.kvf = newKVFollower(cfg, p.hub, p.metrics, logger)
		p.kvs = p.kvf
	case cfg.KVModel:
		p.kv = newKVModel(cfg, p.hub, p.metrics.kvCorrections, logger)
		p.kvs = p.kv
	}

	own := http.NewServeMux()
	own.HandleFunc("GET "+ReadyPath, p.health.ServeReady)
	own.HandleFunc("GET "+WaitForDrainPath, p.health.ServeWaitForDrain)
	own.HandleFunc("GET "+stats.Path, p.serveStats)
	own.Handle("GET "+MetricsPath, promhttp.HandlerFor(p.metrics.registry, promhttp.HandlerOpts{}))
	own.HandleFunc(ReservedPrefix, func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, http.StatusNotFound,
			openai.Err(openai.TypeNotFound, "not_found", "no queue-proxy endpoint "+r.Method+" "+r.URL.Path), 0)
	})
	// Proxied paths bypass the mux so that they reach the engine exactly as
	// sent (no path cleaning or redirects).
	p.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, ReservedPrefix) {
			own.ServeHTTP(w, r)
			return
		}
		p.serveProxy(w, r)
	})
	return p, nil
}

// newTransport is tuned for one local engine: many concurrent streams over
// kept-alive connections, bodies passed through untouched.
func newSyncClient(engine *url.URL) *upstream.Client {
	if engine.Scheme != "http" {
		return nil
	}
	return upstream.New()
}

func newTransport() *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
		ReadBufferSize:        32 << 10,
		WriteBufferSize:       32 << 10,
	}
}

// Handler serves the proxied traffic and the /kvasir/ endpoints.
func (p *Proxy) Handler() http.Handler { return p.handler }

// Run probes the engine's health, scrapes its metrics and broadcasts stats
// until ctx ends; then it sends subscribers a final message, closes their
// streams and returns nil once they are written. Call it once.
func (p *Proxy) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { every(ctx, p.cfg.ProbeInterval, true, p.health.ProbeOnce) })
	wg.Go(func() { every(ctx, p.cfg.ScrapeInterval, true, p.scrapeOnce) })
	wg.Go(func() {
		every(ctx, p.cfg.StatsInterval, false, func(context.Context) { p.hub.broadcast(statMessage(p.Stat())) })
	})
	if p.kvf != nil {
		wg.Go(func() { p.kvf.run(ctx, p.cfg) })
	}
	if p.cfg.LoRAAdaptersFile != "" {
		l := &loraReconciler{p: p, path: p.cfg.LoRAAdaptersFile, ops: map[string]*loraOp{}, now: time.Now}
		wg.Go(func() { every(ctx, p.cfg.ScrapeInterval, false, l.tick) })
	}
	if p.kvs != nil {
		wg.Go(func() { every(ctx, p.cfg.KVFlushInterval, false, func(context.Context) { p.kvs.flush() }) })
	}
	wg.Wait()
	if p.kvs != nil {
		p.kvs.flush()
	}
	p.hub.close(statMessage(p.Stat()))
	p.hub.wait()
	p.transport.CloseIdleConnections()
	return nil
}

// every calls f each period until ctx ends, first at once if now is set.
func every(ctx context.Context, period time.Duration, now bool, f func(context.Context)) {
	if now {
		f(ctx)
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(ctx)
		}
	}
}

// Stat returns the current report.
func (p *Proxy) Stat() stats.Stat {
	s := stats.Stat{
		Pod:      p.cfg.PodName,
		Time:     time.Now().UTC(),
		Ready:    p.health.Ready(),
		Draining: p.health.Draining(),
		InFlight: int(p.inFlight.Load()),
		Queued:   p.queued(),
	}
	p.mu.Lock()
	t, es := p.totals, p.engineStat
	p.mu.Unlock()
	s.Requests, s.Errors = t.requests, t.errors
	s.PromptTokens, s.CachedTokens, s.CompletionTokens = t.promptTokens, t.cachedTokens, t.completionTokens
	s.TTFTSecondsSum, s.TTFTCount = t.ttftSum, t.ttftCount
	s.ITLSecondsSum, s.ITLCount = t.itlSum, t.itlCount
	es.LoRAAdapters = slices.Clone(es.LoRAAdapters)
	s.Engine = es
	return s
}

// KVBlocks is the number of prompt blocks the KV model believes, or the
// engine's KV events say, the engine holds in its prefix cache (0 with
// neither).
func (p *Proxy) KVBlocks() int {
	if p.kvs == nil {
		return 0
	}
	return p.kvs.len()
}

func (p *Proxy) queued() int {
	if p.limiter == nil {
		return 0
	}
	return p.limiter.queued()
}

// Drain starts draining: readiness fails at once and stats subscribers are
// told (Draining true). Requests are still proxied. Drain returns after the
// quiet period (or when ctx ends), leaving load balancers time to stop
// sending; the caller then stops accepting, e.g. with http.Server.Shutdown,
// which waits for in-flight requests and streams. Main does exactly that.
func (p *Proxy) Drain(ctx context.Context) {
	if p.health.StartDrain() {
		p.log.Info("draining", slog.Duration("quietPeriod", p.cfg.DrainQuietPeriod),
			slog.Int64("inFlight", p.inFlight.Load()), slog.Int("queued", p.queued()))
		p.hub.broadcast(statMessage(p.Stat()))
	}
	p.health.WaitQuiet(ctx, p.cfg.DrainQuietPeriod)
}

// WaitForDrainPath answers once the proxy has drained: a drain started, its
// quiet period is over and no proxied request is left. The engine
// container's preStop hook calls it on Kubernetes, so the engine is stopped
// only after the queue-proxy has finished every request.
const WaitForDrainPath = ReservedPrefix + "wait-for-drain"

// scrapeWarmer scrapes the engine's metrics before the engine is reported
// ready, so that the KV model knows the engine's block size and capacity
// when the first requests of a cold start arrive.
type scrapeWarmer struct{ p *Proxy }

var _ health.Warmer = scrapeWarmer{}

// Warm scrapes the engine's metrics once.
func (w scrapeWarmer) Warm(ctx context.Context) { w.p.scrapeOnce(ctx) }

// scrapeOnce refreshes the engine stat.
func (p *Proxy) scrapeOnce(ctx context.Context) {
	es, err := p.scrapeEngine(ctx)
	if ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	prev := p.engineStat
	p.engineStat = es
	p.mu.Unlock()
	p.kvScraped(ctx, es, prev)
	if p.kvf != nil && es.Scraped {
		p.kvf.capacityScraped(es.NumGPUBlocks)
		if prev.Scraped && es.PrefixCacheQuery < prev.PrefixCacheQuery {
			// The engine restarted (its counters went back) and may not
			// have published since: what was followed is gone.
			p.kvf.restarted()
		}
	}
	switch was := prev.Scraped; {
	case err != nil && was:
		p.log.Warn("engine metrics scrape failing", slog.Any("error", err))
	case err == nil && !was:
		p.log.Info("engine metrics scraped")
	}
}

// engineURL is the engine's base URL with path appended.
func (p *Proxy) engineURL(path string) string {
	u := *p.engine
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	return u.String()
}
