package queueproxy

import (
	"bytes"
	"context"
	"crypto/tls"
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
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

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

// Proxy is the queue-proxy of one engine. Create it with New, serve it
// with Serve, and keep Run going for as long as it serves.
type Proxy struct {
	cfg Config
	log *slog.Logger
	// logRequests: each request is logged (the logger takes debug
	// records; asked once, the handler's Enabled cost about 0.4 µs a
	// request).
	logRequests bool
	engine      *url.URL
	// transport serves the proxy's own requests to the engine (health
	// probes, metrics scrapes, model lists, LoRA loads).
	transport *http.Transport
	// pool carries the proxied requests to the engine, written and read on
	// the request's own goroutine with fasthttp's wire types.
	pool *upstream.Pool
	// enginePrefix is the engine URL's path, without a trailing slash,
	// put in front of every proxied path; engineHost its Host header.
	enginePrefix, engineHost string
	// server is the public listener: fasthttp, with the limits of
	// cfg.Limits.
	server  *httpserver.FastServer
	own     fasthttp.RequestHandler // the /kvasir/ endpoints (net/http handlers)
	limiter *limiter                // nil when unlimited
	metrics *metrics
	hub     *hub
	kv      *kvModel    // the KV model; nil with --kv-model=false or KV events
	kvf     *kvFollower // the engine's KV events; nil without --kv-events-endpoint
	kvs     kvSource    // kv or kvf, whichever streams KV events; nil for none

	// engineAdapters are the LoRA adapters the engine's model list showed
	// last (read-only once stored); nil before the first list.
	engineAdapters atomic.Pointer[map[string]struct{}]
	upgrader       websocket.Upgrader
	bodies         httpserver.BodyReader // request bodies

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
		cfg:          cfg,
		log:          logger,
		logRequests:  logger.Enabled(context.Background(), slog.LevelDebug),
		engine:       engine,
		transport:    newTransport(),
		pool:         newPool(engine),
		enginePrefix: strings.TrimSuffix(engine.EscapedPath(), "/"),
		engineHost:   engine.Host,
		hub:          newHub(logger),
		upgrader:     websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 4096},
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
	own.Handle("GET "+MetricsPath, p.MetricsHandler())
	own.HandleFunc(ReservedPrefix, func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, http.StatusNotFound,
			openai.Err(openai.TypeNotFound, "not_found", "no queue-proxy endpoint "+r.Method+" "+r.URL.Path), 0)
	})
	// The own endpoints are few and not on the request path: they keep
	// their net/http handlers (the stats WebSocket hijacks the connection
	// through the adaptor).
	p.own = fasthttpadaptor.NewFastHTTPHandler(detach(own))
	p.server = httpserver.NewFast(p.serve, cfg.Limits, logger)
	return p, nil
}

// MetricsHandler serves the queue-proxy's metrics in Prometheus's text
// format: at /kvasir/metrics, and at /metrics on --admin-addr.
func (p *Proxy) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(p.metrics.registry, promhttp.HandlerOpts{})
}

// detach gives the own endpoints' requests a context of their own. The
// adaptor's is the fasthttp.RequestCtx, which the server resets for the
// connection's next request while work a handler started may still read
// it: the readiness probe's dial (net/http's transport dials on after its
// request gave up) asked it for values after the reset. The context
// ends when the handler returns or the server shuts down (the
// RequestCtx's Done).
func detach(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if done := r.Context().Done(); done != nil {
			go func() {
				select {
				case <-done:
					cancel()
				case <-ctx.Done():
				}
			}()
		}
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// maxOwnBody is the largest request body the /kvasir/ endpoints take (they
// read none; the adaptor would read any whole).
const maxOwnBody = 4 << 10

// serve is the fasthttp handler of the port. Proxied paths bypass the mux
// so that they reach the engine exactly as sent (no path cleaning or
// redirects).
func (p *Proxy) serve(ctx *fasthttp.RequestCtx) {
	if bytes.HasPrefix(ctx.Path(), []byte(ReservedPrefix)) {
		if cl := ctx.Request.Header.ContentLength(); cl == -1 || cl > maxOwnBody {
			ctx.Response.SetConnectionClose()
			httpserver.WriteError(ctx, fasthttp.StatusRequestEntityTooLarge, openai.ErrBodyTooLarge, 0)
			return
		}
		p.own(ctx)
		return
	}
	p.serveProxy(ctx)
}

// newPool is the pool of connections to the engine.
func newPool(engine *url.URL) *upstream.Pool {
	var tlsConfig *tls.Config
	addr := engine.Host
	if engine.Scheme == "https" {
		tlsConfig = &tls.Config{ServerName: engine.Hostname(), MinVersion: tls.VersionTLS12}
		if engine.Port() == "" {
			addr = net.JoinHostPort(engine.Hostname(), "443")
		}
	} else if engine.Port() == "" {
		addr = net.JoinHostPort(engine.Hostname(), "80")
	}
	return upstream.NewPool(addr, tlsConfig, upstream.NewWatchdog(checkInterval))
}

// newTransport is tuned for one local engine: kept-alive connections, no
// transparent compression.
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

// Serve serves the proxied traffic and the /kvasir/ endpoints on ln (with
// fasthttp, within cfg.Limits) until Shutdown or Close. It may be called
// for more than one listener.
func (p *Proxy) Serve(ln net.Listener) error { return p.server.Serve(ln) }

// Start listens on addr (host:port; port 0 picks one) and serves there in
// the background, as Serve does, until Shutdown or Close. It returns the
// address listened on. It is for embedders and tests; Main serves with
// Serve.
func (p *Proxy) Start(addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("queue-proxy: listen: %w", err)
	}
	go func() { _ = p.Serve(ln) }()
	return ln.Addr().String(), nil
}

// Shutdown stops accepting connections, closes idle ones, and waits for
// the requests and streams in flight to finish, or for ctx to end (its
// error then).
func (p *Proxy) Shutdown(ctx context.Context) error { return p.server.Shutdown(ctx) }

// Close closes the listeners and every connection: the requests in flight
// see their client gone and cancel their engine requests.
func (p *Proxy) Close() error { return p.server.Close() }

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
		wg.Go(func() { flushKV(ctx, p.cfg.KVFlushInterval, p.kvs) })
	}
	wg.Wait()
	if p.kvs != nil {
		p.kvs.flush()
	}
	p.hub.close(statMessage(p.Stat()))
	p.hub.wait()
	p.transport.CloseIdleConnections()
	p.pool.CloseIdle()
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

// flushKV sends src's changes to the subscribers, batched: what changed
// during a period goes out at its end, one message a period while changes
// keep coming. Nothing runs while src does not change (a ticker here cost
// an idle queue-proxy 12 ms of CPU a second at the default 20 ms), and
// under steady changes the goroutine wakes once a period, on its timer (a
// change's token waits in the channel until the period is over). The first
// change after a quiet period waits a period too, as behind a ticker. (A
// version that sent it at once made TestPrefillDecodeThroughLocal fail in
// about half the runs; the cause turned out to be the simulator serving
// before its KV-event subscription had arrived, since fixed in pkg/sim, and
// sending at once was not tried again after that fix.)
func flushKV(ctx context.Context, period time.Duration, src kvSource) {
	t := time.NewTimer(period)
	t.Stop()
	wait := func() bool {
		t.Reset(period)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
			return true
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-src.changed():
		}
		if !wait() {
			return
		}
		src.flush()
		for quiet := false; !quiet; {
			if !wait() {
				return
			}
			select {
			case <-src.changed():
				src.flush() // what changed during the period
			default:
				quiet = true // back to waiting for the next change
			}
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
// sending; the caller then stops accepting with Shutdown, which waits for
// in-flight requests and streams. Main does exactly that.
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
