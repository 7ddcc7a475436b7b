package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/activator/kube"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/maxprocs"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// ActivatorMain runs an activator: on Kubernetes (--kubernetes) fed by
// informers on ModelServices, ModelRevisions, EndpointSlices, Tenants and
// the Secrets holding their keys; otherwise in front of static queue-proxy
// backends (one model, one revision).
func ActivatorMain(ctx context.Context, args []string, stderr io.Writer) error {
	f, err := parseActivatorFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := NewLogger(stderr, f.level)
	if err != nil {
		return err
	}
	// The process's Ps follow its CPU use, as the queue-proxy's do: one
	// while it uses at most half a core (docs/benchmarks.md, the seventh
	// session of issue 17: about 10% less CPU a request, the 2,000-stream
	// peak RSS unchanged). `kvasir local`, which runs the activator with the
	// rest of the platform, keeps the runtime's default.
	defer maxprocs.Start(ctx, log.With(slog.String("part", "maxprocs")))()
	routing, err := ParseRouting(f.routing)
	if err != nil {
		return UsageError{"--routing: " + err.Error()}
	}
	reg := prometheus.NewRegistry()
	demand := make(chan struct{}, 1) // a request was buffered: report at once
	limiter, closeLimiter, err := activator.NewRateLimiter(f.rateLimit.Redis, f.rateLimit.Mode, reg, log)
	if err != nil {
		return err
	}
	defer func() { _ = closeLimiter() }()
	act, err := newActivator(f, reg, demand, log, activator.WithRateLimiter(limiter))
	if err != nil {
		return err
	}
	defer act.Close()
	if f.onKube && f.autoscalerURL != "" {
		startReporting(ctx, f, act, demand, log)
	}
	gate := newAuthGate(act, f.requireAuth, log)
	if f.onKube {
		if err := followCluster(ctx, f.namespace, gate, log); err != nil {
			return err
		}
	} else if err := routeStatic(act, f.model, f.cc, routing, f.backends); err != nil {
		return err
	}
	return serveActivator(ctx, f, act, gate, reg, log)
}

// activatorFlags are the activator's command line.
type activatorFlags struct {
	cfg                                              activator.Config
	limits                                           httpserver.Limits
	addr, model, level, profAddr, adminAddr, routing string
	namespace, autoscalerURL, tokenFile, podName     string
	cc                                               int
	followStats, onKube, requireAuth                 bool
	drainTimeout, quiet                              time.Duration
	backends                                         stringList
	rateLimit                                        RateLimitFlags
}

// parseActivatorFlags parses and checks the activator's command line.
func parseActivatorFlags(args []string, stderr io.Writer) (*activatorFlags, error) {
	fs := flag.NewFlagSet("activator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &activatorFlags{cfg: activator.DefaultConfig(), limits: httpserver.DefaultLimits()}
	fs.StringVar(&f.addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&f.model, "model", "", "model name clients send (required)")
	fs.IntVar(&f.cc, "container-concurrency", 0, "in-flight limit per backend (0 = unlimited)")
	fs.StringVar(&f.level, "log-level", "info", "log level")
	fs.StringVar(&f.profAddr, "profiling-addr", "", "also serve the admin endpoints (pprof among them) on this address (off when empty; see --admin-addr)")
	fs.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:9090", "address of the operator endpoints: /metrics, /healthz, /debug/pprof/ (off when empty)")
	fs.BoolVar(&f.followStats, "follow-stats", true, "follow each backend's queue-proxy stats stream (load and KV events for routing)")
	fs.StringVar(&f.routing, "routing", "", "scheduler plugins as name[:weight],... (default kv-cache-aware:3,least-request:2)")
	fs.BoolVar(&f.onKube, "kubernetes", false, "route what the cluster's ModelServices say (in-cluster or $KUBECONFIG credentials)")
	fs.StringVar(&f.namespace, "namespace", "", "with --kubernetes: watch only this namespace (default: all)")
	fs.StringVar(&f.autoscalerURL, "autoscaler-url", "ws://autoscaler.kvasir-serving.svc.cluster.local:8080",
		"with --kubernetes: where to report demand to the autoscaler (empty: do not report)")
	fs.StringVar(&f.tokenFile, "autoscaler-token-file", stats.DefaultTokenFile,
		"with --kubernetes: file holding the token the autoscaler asks of reports (the mounted Secret "+
			"kvasir-autoscaler-token); read at each connection")
	fs.StringVar(&f.podName, "pod-name", os.Getenv("POD_NAME"), "this activator's name in its reports (default $POD_NAME, else the host name)")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 0,
		"on SIGTERM, how long in-flight requests and streams may take to finish after the quiet period (0: --request-timeout)")
	fs.DurationVar(&f.quiet, "drain-quiet-period", time.Second,
		"on SIGTERM, how long requests are still accepted while /healthz answers 503, so that load balancers stop sending before the listener closes")
	fs.BoolVar(&f.requireAuth, "require-auth", false,
		"with --kubernetes: refuse to serve the API without a Tenant (an API open to anyone who can reach it): "+
			"/v1/* answers 503 until a Tenant with an API key is loaded")
	fs.Var(&f.backends, "backend", "queue-proxy address host:port (repeatable, at least one; without --kubernetes)")
	RegisterActivatorFlags(fs, &f.cfg)
	httpserver.RegisterFlags(fs, &f.limits)
	f.rateLimit.Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, UsageError{err.Error()}
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// validate checks the limits and that the flags fit the mode: the cluster
// names models and backends with --kubernetes, the command line otherwise.
func (f *activatorFlags) validate() error {
	if err := f.limits.Validate(); err != nil {
		return UsageError{err.Error()}
	}
	if err := f.rateLimit.Validate(); err != nil {
		return err
	}
	switch {
	case f.onKube && (len(f.backends) > 0 || f.model != "" || f.routing != ""):
		return UsageError{"--kubernetes: --backend, --model and --routing come from the cluster"}
	case !f.onKube && f.model == "":
		return UsageError{"--model: required"}
	case !f.onKube && len(f.backends) == 0:
		return UsageError{"--backend: at least one is required"}
	case !f.onKube && f.requireAuth:
		return UsageError{"--require-auth: only with --kubernetes (Tenants come from the cluster)"}
	}
	return nil
}

// newActivator builds the activator; a buffered request signals demand.
func newActivator(f *activatorFlags, reg *prometheus.Registry, demand chan<- struct{}, log *slog.Logger,
	opts ...activator.Option,
) (*activator.Activator, error) {
	return activator.New(f.cfg, append([]activator.Option{activator.WithLogger(log), activator.WithRegisterer(reg),
		activator.WithStatsStreams(f.followStats),
		activator.WithLimits(f.limits, httpserver.NewBudget(f.limits.BodyBudget)),
		activator.WithOnDemand(func(fleet.Key) {
			select {
			case demand <- struct{}{}:
			default:
			}
		})}, opts...)...)
}

// startReporting reports the activator's demand to the autoscaler until ctx
// ends.
func startReporting(ctx context.Context, f *activatorFlags, act *activator.Activator, demand <-chan struct{}, log *slog.Logger) {
	name := f.podName
	if name == "" {
		name, _ = os.Hostname()
	}
	go stats.Report(ctx, strings.TrimSuffix(f.autoscalerURL, "/"), stats.TokenFile(f.tokenFile), time.Second, demand,
		func() stats.ActivatorReport { return act.Report(name) }, log)
}

// followCluster feeds the activator what the cluster's ModelServices,
// ModelRevisions, EndpointSlices, Tenants and their Secrets say, until ctx
// ends.
func followCluster(ctx context.Context, namespace string, act kube.Target, log *slog.Logger) error {
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("--kubernetes: %w", err)
	}
	sync, err := kube.New(restCfg, act, kube.Options{Namespace: namespace, Logger: log})
	if err != nil {
		return err
	}
	go func() {
		if err := sync.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("following the cluster stopped", slog.Any("error", err))
		}
	}()
	return nil
}

// routeStatic routes one model, as one revision, to static backends.
func routeStatic(act *activator.Activator, model string, cc int, routing []v1alpha1.RoutingPlugin, backends []string) error {
	svc := staticService(model, cc, routing)
	if err := act.SetServices([]activator.ServiceConfig{svc}); err != nil {
		return UsageError{"--routing: " + err.Error()}
	}
	eps, err := staticEndpoints(backends)
	if err != nil {
		return err
	}
	act.SetEndpoints(svc.Key(staticRevision(model)), eps)
	return nil
}

// staticRevision names the one revision of a model served without
// Kubernetes.
func staticRevision(model string) string { return model + "-static" }

// staticService is the service of a model served without Kubernetes: one
// revision takes all its traffic.
func staticService(model string, cc int, routing []v1alpha1.RoutingPlugin) activator.ServiceConfig {
	rev := staticRevision(model)
	return activator.ServiceConfig{Namespace: "default", Name: model, Model: model, Routing: routing,
		Traffic:   []traffic.Target{{Revision: rev, Percent: 100}},
		Revisions: []activator.RevisionConfig{{Name: rev, ContainerConcurrency: cc}}}
}

// staticEndpoints names the --backend addresses backend-0, backend-1, ...
func staticEndpoints(backends []string) ([]fleet.Endpoint, error) {
	eps := make([]fleet.Endpoint, 0, len(backends))
	for i, b := range backends {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return nil, UsageError{fmt.Sprintf("--backend %q: %v", b, err)}
		}
		eps = append(eps, fleet.Endpoint{Name: fmt.Sprintf("backend-%d", i), Address: b})
	}
	return eps, nil
}

// serveActivator serves the API and the admin endpoints until ctx ends,
// then drains.
func serveActivator(ctx context.Context, f *activatorFlags, act *activator.Activator, gate *authGate,
	reg *prometheus.Registry, log *slog.Logger,
) error {
	var draining atomic.Bool
	public := publicHandler(gate.Handler(act.FastHandler()), drainingHealthz(&draining))
	admin := httpserver.AdminMux(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if f.profAddr != "" { // before --admin-addr existed; pprof is on the admin listener too
		psrv, err := serveProfiling(f.profAddr, admin, f.limits, log)
		if err != nil {
			return err
		}
		defer psrv.Close()
	}
	srv, errCh, addrs, err := serve(f.addr, public, f.adminAddr, admin, f.limits, log)
	if err != nil {
		return err
	}
	defer srv.admin.Close()
	log.Info("activator serving", slog.String("addr", addrs.public), slog.String("admin", addrs.admin), slog.String("model", f.model), slog.Any("backends", []string(f.backends)))
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
	}
	drainTO := f.drainTimeout
	if drainTO == 0 {
		drainTO = f.cfg.RequestTimeout
	}
	return drain(srv.public, errCh, &draining, f.quiet, drainTO, log)
}

// serveProfiling serves the admin endpoints on addr too (--profiling-addr).
func serveProfiling(addr string, admin http.Handler, limits httpserver.Limits, log *slog.Logger) (*http.Server, error) {
	pl, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen --profiling-addr %s: %w", addr, err)
	}
	psrv := httpserver.New(admin, limits, log)
	go func() { _ = httpserver.ServeAdmin(psrv, pl) }()
	return psrv, nil
}

// ParseRouting parses "name[:weight],..." into routing plugins ("" = none,
// meaning the default).
func ParseRouting(s string) ([]v1alpha1.RoutingPlugin, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []v1alpha1.RoutingPlugin
	for _, part := range strings.Split(s, ",") {
		name, weight, hasWeight := strings.Cut(strings.TrimSpace(part), ":")
		p := v1alpha1.RoutingPlugin{Name: name}
		if hasWeight {
			w, err := strconv.Atoi(weight)
			if err != nil || w < 0 {
				return nil, fmt.Errorf("%q: weight must be a non-negative integer", part)
			}
			p.Weight = w
		}
		out = append(out, p)
	}
	return out, nil
}

// errNoTenants is the 503 of --require-auth while no Tenant with an API key
// is loaded.
var errNoTenants = openai.Err(openai.TypeUnavailable, "api_keys_not_configured",
	"this server requires API keys (--require-auth) and no Tenant with an API key is loaded yet")

// authGate stands between the cluster and the activator's tenants: it
// counts the API keys loaded and logs when the API opens or closes. With
// --require-auth its Handler answers 503 while there is none, rather than
// serve the API open; the pod stays ready (/healthz), so that a fleet whose
// Tenants are deleted answers clearly rather than drop out of its Service.
type authGate struct {
	kube.Target
	require bool
	log     *slog.Logger
	// keys are the API keys loaded; -1 before the first SetTenants.
	keys atomic.Int64
}

var _ kube.Target = (*authGate)(nil)

func newAuthGate(t kube.Target, require bool, log *slog.Logger) *authGate {
	g := &authGate{Target: t, require: require, log: log}
	g.keys.Store(-1)
	return g
}

// SetTenants gives the tenants to the activator. The gate closes before
// the activator opens (no key left) and opens after it enforces keys, so
// no request is served open in between.
func (g *authGate) SetTenants(cfgs []activator.TenantConfig) error {
	n := 0
	for _, c := range cfgs {
		n += len(c.Keys)
	}
	var prev int64
	if n == 0 {
		prev = g.keys.Swap(0)
	}
	if err := g.Target.SetTenants(cfgs); err != nil {
		if n == 0 {
			g.keys.Store(prev)
		}
		return err
	}
	if n > 0 {
		prev = g.keys.Swap(int64(n))
	}
	g.logChange(prev, n, len(cfgs))
	return nil
}

// logChange logs once when the API becomes open (or, with --require-auth,
// unavailable) and when it starts requiring keys.
func (g *authGate) logChange(prev int64, keys, tenants int) {
	switch {
	case keys > 0 && prev <= 0:
		g.log.Info("API keys required", slog.Int("tenants", tenants), slog.Int("keys", keys))
	case keys == 0 && prev != 0 && g.require:
		g.log.Warn("no Tenant with an API key is loaded, and --require-auth refuses to serve the API open: /v1/* answers 503 until one is")
	case keys == 0 && prev != 0:
		g.log.Warn("no Tenant defined: the API is open to anyone who can reach it (--require-auth refuses that)")
	}
}

// Handler is next behind the gate: with --require-auth, 503 while no key
// is loaded.
func (g *authGate) Handler(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	if !g.require {
		return next
	}
	return func(ctx *fasthttp.RequestCtx) {
		if g.keys.Load() <= 0 {
			httpserver.WriteError(ctx, http.StatusServiceUnavailable, errNoTenants, 5*time.Second)
			return
		}
		next(ctx)
	}
}

// publicHandler serves the activator's public listener: the API under
// /v1/, the readiness probe at /healthz, and 404 for anything else.
func publicHandler(api, healthz fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		path := ctx.Path()
		switch {
		case bytes.HasPrefix(path, []byte("/v1/")):
			api(ctx)
		case string(path) == "/healthz" && (ctx.IsGet() || ctx.IsHead()):
			healthz(ctx)
		default:
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetBodyString("404 page not found\n")
		}
	}
}
