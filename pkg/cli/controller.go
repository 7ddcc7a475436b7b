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
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	metricsclient "k8s.io/metrics/pkg/client/clientset/versioned"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/autoscaling"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/modelservice"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// ControllerMain runs the Kvasir controller: the ModelService and
// ModelRevision reconcilers and the autoscaler in a controller-runtime
// manager with leader election.
func ControllerMain(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var res resources.Config
	fs.StringVar(&res.QueueProxyImage, "queue-proxy-image", "", "image of the queue-proxy sidecar (required)")
	fs.StringVar(&res.SimulatorImage, "simulator-image", "", "image of engine.type sim (required)")
	baseURL := fs.String("base-url", "http://activator.kvasir-serving.svc.cluster.local/v1", "the activators' OpenAI API base, for status URLs")
	namespace := fs.String("namespace", "", "watch only this namespace (default: all)")
	leaderElect := fs.Bool("leader-elect", true, "elect one active controller among replicas")
	leaderNS := fs.String("leader-election-namespace", "kvasir-serving", "namespace of the leader election lease")
	metricsAddr := fs.String("metrics-addr", ":9090", "Prometheus metrics address (0 = off)")
	probeAddr := fs.String("health-probe-addr", ":8081", "/healthz and /readyz address")
	keep := fs.Int("keep-revisions", 2, "unreferenced revisions kept per service for rollback")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	autoscalerAddr := fs.String("autoscaler-addr", ":8080", "where the leader's autoscaler receives the activators' reports")
	autoscalerSvc := fs.String("autoscaler-service", "autoscaler",
		"selector-less Service (in --leader-election-namespace) whose endpoint the leader sets to $POD_IP (empty: none)")
	tick := fs.Duration("autoscaler-tick", time.Second, "the autoscaler's decision period")
	resourceMetrics := fs.Duration("resource-metrics-interval", autoscaling.DefaultResourceMetricsInterval,
		"how often the autoscaler reads pods' CPU and memory from metrics.k8s.io (0 = never)")
	if err := fs.Parse(args); err != nil {
		return UsageError{err.Error()}
	}
	var missing []string
	if res.QueueProxyImage == "" {
		missing = append(missing, "--queue-proxy-image")
	}
	if res.SimulatorImage == "" {
		missing = append(missing, "--simulator-image")
	}
	if len(missing) > 0 {
		return UsageError{strings.Join(missing, ", ") + ": required"}
	}
	if *keep < 0 {
		return UsageError{"--keep-revisions: must be >= 0"}
	}
	log, err := NewLogger(stderr, *level)
	if err != nil {
		return err
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	opts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:  *probeAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        "kvasir-controller",
		LeaderElectionNamespace: *leaderNS,
	}
	opts.Cache = reconciler.CacheOptions(*namespace)
	res.SystemNamespace = *leaderNS
	restCfg := ctrl.GetConfigOrDie()
	mgr, err := ctrl.NewManager(restCfg, opts)
	if err != nil {
		return err
	}
	// Every replica holds the report token, so that whichever leads
	// accepts the activators' reports. Read and made past the cache.
	direct, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	token, err := autoscaling.EnsureToken(ctx, direct, *leaderNS)
	if err != nil {
		return err
	}
	recorder := mgr.GetEventRecorder("kvasir-controller")
	if err := (&modelservice.Reconciler{Client: mgr.GetClient(), Events: recorder, BaseURL: *baseURL,
		KeepRevisions: *keep}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&revision.Reconciler{Client: mgr.GetClient(), Events: recorder, Resources: res}).SetupWithManager(mgr); err != nil {
		return err
	}
	as := &autoscaling.Autoscaler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Events: recorder, Log: log.With(slog.String("component", "autoscaler")),
		Registerer: ctrlmetrics.Registry, Addr: *autoscalerAddr, Tick: *tick, ReportToken: token}
	if *resourceMetrics > 0 {
		mc, err := metricsclient.NewForConfig(restCfg)
		if err != nil {
			return fmt.Errorf("metrics.k8s.io client: %w", err)
		}
		as.ResourceMetrics, as.ResourceMetricsInterval = mc.MetricsV1beta1(), *resourceMetrics
	}
	if ip := os.Getenv("POD_IP"); *autoscalerSvc != "" && ip != "" {
		_, port, err := net.SplitHostPort(*autoscalerAddr)
		if err != nil {
			return UsageError{fmt.Sprintf("--autoscaler-addr %q: %v", *autoscalerAddr, err)}
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return UsageError{fmt.Sprintf("--autoscaler-addr %q: port: %v", *autoscalerAddr, err)}
		}
		as.Endpoint = &autoscaling.LeaderEndpoint{Namespace: *leaderNS, Service: *autoscalerSvc, IP: ip, Port: int32(p), PortName: "http"}
	} else if *autoscalerSvc != "" {
		log.Warn("POD_IP is not set: the activators reach this autoscaler only if the Service selects it", slog.String("service", *autoscalerSvc))
	}
	if err := mgr.Add(as); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", func(*http.Request) error { return nil }); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", func(*http.Request) error { return nil }); err != nil {
		return err
	}
	log.Info("controller starting", slog.Bool("leaderElect", *leaderElect), slog.String("namespace", *namespace))
	return mgr.Start(ctx)
}
