package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/activator/kube"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
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
	profAddr := fs.String("profiling-addr", "", "serve Go's pprof endpoints on this address (off when empty)")
	followStats := fs.Bool("follow-stats", true, "follow each backend's queue-proxy stats stream (load and KV events for routing)")
	routingFlag := fs.String("routing", "", "scheduler plugins as name[:weight],... (default kv-cache-aware:3,least-request:2)")
	onKube := fs.Bool("kubernetes", false, "route what the cluster's ModelServices say (in-cluster or $KUBECONFIG credentials)")
	namespace := fs.String("namespace", "", "with --kubernetes: watch only this namespace (default: all)")
	autoscalerURL := fs.String("autoscaler-url", "ws://autoscaler.kvasir-serving.svc.cluster.local:8080",
		"with --kubernetes: where to report demand to the autoscaler (empty: do not report)")
	podName := fs.String("pod-name", os.Getenv("POD_NAME"), "this activator's name in its reports (default $POD_NAME, else the host name)")
	var backends stringList
	fs.Var(&backends, "backend", "queue-proxy address host:port (repeatable, at least one; without --kubernetes)")
	RegisterActivatorFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
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
		go stats.Report(ctx, strings.TrimSuffix(*autoscalerURL, "/"), time.Second, demand,
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
	mux := http.NewServeMux()
	mux.Handle("/v1/", act.Handler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if *profAddr != "" {
		pl, err := net.Listen("tcp", *profAddr)
		if err != nil {
			return fmt.Errorf("listen --profiling-addr %s: %w", *profAddr, err)
		}
		pmux := http.NewServeMux()
		pmux.HandleFunc("/debug/pprof/", pprof.Index)
		pmux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		pmux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		psrv := &http.Server{Handler: pmux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = psrv.Serve(pl) }()
		defer psrv.Close()
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 5 * time.Minute}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	log.Info("activator serving", slog.String("addr", ln.Addr().String()), slog.String("model", *model), slog.Any("backends", []string(backends)))
	select {
	case err := <-errCh:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
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
