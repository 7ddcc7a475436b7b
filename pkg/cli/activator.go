package cli

import (
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
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/activator/kube"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// ActivatorMain runs an activator: on Kubernetes (--kubernetes) fed by
// informers on ModelServices, ModelRevisions and EndpointSlices; otherwise
// in front of static queue-proxy backends (one model, one revision).
func ActivatorMain(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("activator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := activator.DefaultConfig()
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	model := fs.String("model", "", "model name clients send (required)")
	cc := fs.Int("container-concurrency", 0, "in-flight limit per backend (0 = unlimited)")
	level := fs.String("log-level", "info", "log level")
	profAddr := fs.String("profiling-addr", "", "also serve the admin endpoints (pprof among them) on this address (off when empty; see --admin-addr)")
	adminAddr := fs.String("admin-addr", "127.0.0.1:9090", "address of the operator endpoints: /metrics, /healthz, /debug/pprof/ (off when empty)")
	followStats := fs.Bool("follow-stats", true, "follow each backend's queue-proxy stats stream (load and KV events for routing)")
	routingFlag := fs.String("routing", "", "scheduler plugins as name[:weight],... (default kv-cache-aware:3,least-request:2)")
	onKube := fs.Bool("kubernetes", false, "route what the cluster's ModelServices say (in-cluster or $KUBECONFIG credentials)")
	namespace := fs.String("namespace", "", "with --kubernetes: watch only this namespace (default: all)")
	autoscalerURL := fs.String("autoscaler-url", "ws://autoscaler.kvasir-serving.svc.cluster.local:8080",
		"with --kubernetes: where to report demand to the autoscaler (empty: do not report)")
	tokenFile := fs.String("autoscaler-token-file", stats.DefaultTokenFile,
		"with --kubernetes: file holding the token the autoscaler asks of reports (the mounted Secret "+
			"kvasir-autoscaler-token); read at each connection")
	podName := fs.String("pod-name", os.Getenv("POD_NAME"), "this activator's name in its reports (default $POD_NAME, else the host name)")
	drainTimeout := fs.Duration("drain-timeout", 0,
		"on SIGTERM, how long in-flight requests and streams may take to finish after the quiet period (0: --request-timeout)")
	quiet := fs.Duration("drain-quiet-period", time.Second,
		"on SIGTERM, how long requests are still accepted while /healthz answers 503, so that load balancers stop sending before the listener closes")
	var backends stringList
	fs.Var(&backends, "backend", "queue-proxy address host:port (repeatable, at least one; without --kubernetes)")
	RegisterActivatorFlags(fs, &cfg)
	limits := httpserver.DefaultLimits()
	httpserver.RegisterFlags(fs, &limits)
	if err := fs.Parse(args); err != nil {
		return UsageError{err.Error()}
	}
	if err := limits.Validate(); err != nil {
		return UsageError{err.Error()}
	}
	switch {
	case *onKube && (len(backends) > 0 || *model != "" || *routingFlag != ""):
		return UsageError{"--kubernetes: --backend, --model and --routing come from the cluster"}
	case !*onKube && *model == "":
		return UsageError{"--model: required"}
	case !*onKube && len(backends) == 0:
		return UsageError{"--backend: at least one is required"}
	}
	log, err := NewLogger(stderr, *level)
	if err != nil {
		return err
	}
	routing, err := ParseRouting(*routingFlag)
	if err != nil {
		return UsageError{"--routing: " + err.Error()}
	}
	reg := prometheus.NewRegistry()
	demand := make(chan struct{}, 1) // a request was buffered: report at once
	act, err := activator.New(cfg, activator.WithLogger(log), activator.WithRegisterer(reg), activator.WithStatsStreams(*followStats),
		activator.WithLimits(limits, httpserver.NewBudget(limits.BodyBudget)),
		activator.WithOnDemand(func(fleet.Key) {
			select {
			case demand <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		return err
	}
	defer act.Close()
	if *onKube && *autoscalerURL != "" {
		name := *podName
		if name == "" {
			name, _ = os.Hostname()
		}
		go stats.Report(ctx, strings.TrimSuffix(*autoscalerURL, "/"), stats.TokenFile(*tokenFile), time.Second, demand,
			func() stats.ActivatorReport { return act.Report(name) }, log)
	}
	if *onKube {
		restCfg, err := ctrl.GetConfig()
		if err != nil {
			return fmt.Errorf("--kubernetes: %w", err)
		}
		sync, err := kube.New(restCfg, act, kube.Options{Namespace: *namespace, Logger: log})
		if err != nil {
			return err
		}
		go func() {
			if err := sync.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("following the cluster stopped", slog.Any("error", err))
			}
		}()
	} else {
		svc := activator.ServiceConfig{Namespace: "default", Name: *model, Model: *model, Routing: routing,
			Traffic:   []traffic.Target{{Revision: *model + "-static", Percent: 100}},
			Revisions: []activator.RevisionConfig{{Name: *model + "-static", ContainerConcurrency: *cc}}}
		if err := act.SetServices([]activator.ServiceConfig{svc}); err != nil {
			return UsageError{"--routing: " + err.Error()}
		}
		eps := make([]fleet.Endpoint, 0, len(backends))
		for i, b := range backends {
			if _, _, err := net.SplitHostPort(b); err != nil {
				return UsageError{fmt.Sprintf("--backend %q: %v", b, err)}
			}
			eps = append(eps, fleet.Endpoint{Name: fmt.Sprintf("backend-%d", i), Address: b})
		}
		act.SetEndpoints(svc.Key(*model+"-static"), eps)
	}
	public := http.NewServeMux()
	public.Handle("/v1/", act.Handler())
	var draining atomic.Bool
	public.HandleFunc("GET /healthz", drainingHealthz(&draining))
	admin := httpserver.AdminMux(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if *profAddr != "" { // before --admin-addr existed; pprof is on the admin listener too
		pl, err := net.Listen("tcp", *profAddr)
		if err != nil {
			return fmt.Errorf("listen --profiling-addr %s: %w", *profAddr, err)
		}
		psrv := httpserver.New(admin, limits, log)
		go func() { _ = psrv.Serve(pl) }()
		defer psrv.Close()
	}
	srv, errCh, addrs, err := serve(*addr, public, *adminAddr, admin, limits, log)
	if err != nil {
		return err
	}
	defer srv.admin.Close()
	log.Info("activator serving", slog.String("addr", addrs.public), slog.String("admin", addrs.admin), slog.String("model", *model), slog.Any("backends", []string(backends)))
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
	}
	drainTO := *drainTimeout
	if drainTO == 0 {
		drainTO = cfg.RequestTimeout
	}
	return drain(srv.public, errCh, &draining, *quiet, drainTO, log)
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
