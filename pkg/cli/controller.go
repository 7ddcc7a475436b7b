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
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	metricsclient "k8s.io/metrics/pkg/client/clientset/versioned"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

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
	f, err := parseControllerFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := NewLogger(stderr, f.level)
	if err != nil {
		return err
	}
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	scheme, err := newScheme()
	if err != nil {
		return err
	}
	restCfg := ctrl.GetConfigOrDie()
	mgr, err := ctrl.NewManager(restCfg, f.managerOptions(scheme))
	if err != nil {
		return err
	}
	// Every replica holds the report token, so that whichever leads
	// accepts the activators' reports. Read and made past the cache.
	direct, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	token, err := autoscaling.EnsureToken(ctx, direct, f.leaderNS)
	if err != nil {
		return err
	}
	recorder := mgr.GetEventRecorder("kvasir-controller")
	if err := f.setupReconcilers(mgr, recorder); err != nil {
		return err
	}
	as, err := f.newAutoscaler(mgr, restCfg, recorder, token, log)
	if err != nil {
		return err
	}
	if err := addToManager(mgr, as); err != nil {
		return err
	}
	log.Info("controller starting", slog.Bool("leaderElect", f.leaderElect), slog.String("namespace", f.namespace))
	return mgr.Start(ctx)
}

// controllerFlags are the controller's command line.
type controllerFlags struct {
	res                                 resources.Config
	baseURL, namespace, leaderNS, level string
	metricsAddr, probeAddr              string
	autoscalerAddr, autoscalerSvc       string
	leaderElect                         bool
	keep                                int
	tick, resourceMetrics               time.Duration
}

// parseControllerFlags parses and checks the controller's command line.
func parseControllerFlags(args []string, stderr io.Writer) (*controllerFlags, error) {
	fs := flag.NewFlagSet("controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &controllerFlags{}
	fs.StringVar(&f.res.QueueProxyImage, "queue-proxy-image", "", "image of the queue-proxy sidecar (required)")
	fs.StringVar(&f.res.SimulatorImage, "simulator-image", "", "image of engine.type sim (required)")
	fs.StringVar(&f.baseURL, "base-url", "http://activator.kvasir-serving.svc.cluster.local/v1", "the activators' OpenAI API base, for status URLs")
	fs.StringVar(&f.namespace, "namespace", "", "watch only this namespace (default: all)")
	fs.BoolVar(&f.leaderElect, "leader-elect", true, "elect one active controller among replicas")
	fs.StringVar(&f.leaderNS, "leader-election-namespace", "kvasir-serving", "namespace of the leader election lease")
	fs.StringVar(&f.metricsAddr, "metrics-addr", ":9090", "Prometheus metrics address (0 = off)")
	fs.StringVar(&f.probeAddr, "health-probe-addr", ":8081", "/healthz and /readyz address")
	fs.IntVar(&f.keep, "keep-revisions", 2, "unreferenced revisions kept per service for rollback")
	fs.StringVar(&f.level, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&f.autoscalerAddr, "autoscaler-addr", ":8080", "where the leader's autoscaler receives the activators' reports")
	fs.StringVar(&f.autoscalerSvc, "autoscaler-service", "autoscaler",
		"selector-less Service (in --leader-election-namespace) whose endpoint the leader sets to $POD_IP (empty: none)")
	fs.DurationVar(&f.tick, "autoscaler-tick", time.Second, "the autoscaler's decision period")
	fs.DurationVar(&f.resourceMetrics, "resource-metrics-interval", autoscaling.DefaultResourceMetricsInterval,
		"how often the autoscaler reads pods' CPU and memory from metrics.k8s.io (0 = never)")
	fs.StringVar(&f.res.CoschedulingSchedulerName, "coscheduling-scheduler-name", resources.DefaultCoschedulingSchedulerName,
		"scheduler that runs scheduler-plugins' coscheduling, given serving groups' pods when the cluster serves its PodGroup "+
			"(a DNS subdomain; empty: coscheduling is not used)")
	if err := fs.Parse(args); err != nil {
		return nil, UsageError{err.Error()}
	}
	if err := f.validate(); err != nil {
		return nil, err
	}
	f.res.SystemNamespace = f.leaderNS
	return f, nil
}

// validate checks that the images are given, --keep-revisions is not
// negative and --coscheduling-scheduler-name is empty or a DNS subdomain
// (what a pod's schedulerName must be).
func (f *controllerFlags) validate() error {
	var missing []string
	if f.res.QueueProxyImage == "" {
		missing = append(missing, "--queue-proxy-image")
	}
	if f.res.SimulatorImage == "" {
		missing = append(missing, "--simulator-image")
	}
	if len(missing) > 0 {
		return UsageError{strings.Join(missing, ", ") + ": required"}
	}
	if f.keep < 0 {
		return UsageError{"--keep-revisions: must be >= 0"}
	}
	if n := f.res.CoschedulingSchedulerName; n != "" {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			return UsageError{fmt.Sprintf("--coscheduling-scheduler-name %s: %s", clipFlag(n), strings.Join(errs, "; "))}
		}
	}
	return nil
}

// clipFlag quotes a flag's value for a usage error, at most 64 bytes of
// it.
func clipFlag(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "…"
	}
	return strconv.Quote(s)
}

// newScheme is the scheme of the Kubernetes types, Kvasir's and
// LeaderWorkerSet's.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := lwsv1.AddToScheme(scheme); err != nil { // serving groups
		return nil, err
	}
	return scheme, nil
}

// managerOptions are the manager's metrics, probes, leader election and
// cache.
func (f *controllerFlags) managerOptions(scheme *runtime.Scheme) ctrl.Options {
	opts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: f.metricsAddr},
		HealthProbeBindAddress:  f.probeAddr,
		LeaderElection:          f.leaderElect,
		LeaderElectionID:        "kvasir-controller",
		LeaderElectionNamespace: f.leaderNS,
	}
	opts.Cache = reconciler.CacheOptions(f.namespace)
	return opts
}

// setupReconcilers registers the ModelService and ModelRevision
// reconcilers.
func (f *controllerFlags) setupReconcilers(mgr ctrl.Manager, recorder events.EventRecorder) error {
	if err := (&modelservice.Reconciler{Client: mgr.GetClient(), Events: recorder, BaseURL: f.baseURL,
		KeepRevisions: f.keep}).SetupWithManager(mgr); err != nil {
		return err
	}
	return (&revision.Reconciler{Client: mgr.GetClient(), Events: recorder, Resources: f.res}).SetupWithManager(mgr)
}

// newAutoscaler builds the autoscaler: it reads resource metrics when
// asked to, and points its Service at this pod when it leads.
func (f *controllerFlags) newAutoscaler(mgr ctrl.Manager, restCfg *rest.Config, recorder events.EventRecorder, token []byte,
	log *slog.Logger) (*autoscaling.Autoscaler, error) {
	as := &autoscaling.Autoscaler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Events: recorder, Log: log.With(slog.String("component", "autoscaler")),
		Registerer: ctrlmetrics.Registry, Addr: f.autoscalerAddr, Tick: f.tick, ReportToken: token}
	if f.resourceMetrics > 0 {
		mc, err := metricsclient.NewForConfig(restCfg)
		if err != nil {
			return nil, fmt.Errorf("metrics.k8s.io client: %w", err)
		}
		as.ResourceMetrics, as.ResourceMetricsInterval = mc.MetricsV1beta1(), f.resourceMetrics
	}
	if ip := os.Getenv("POD_IP"); f.autoscalerSvc != "" && ip != "" {
		ep, err := leaderEndpoint(f.autoscalerAddr, f.leaderNS, f.autoscalerSvc, ip)
		if err != nil {
			return nil, err
		}
		as.Endpoint = ep
	} else if f.autoscalerSvc != "" {
		log.Warn("POD_IP is not set: the activators reach this autoscaler only if the Service selects it", slog.String("service", f.autoscalerSvc))
	}
	return as, nil
}

// leaderEndpoint is the endpoint the leader gives the autoscaler's Service:
// this pod's IP and the port of --autoscaler-addr.
func leaderEndpoint(addr, namespace, service, ip string) (*autoscaling.LeaderEndpoint, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, UsageError{fmt.Sprintf("--autoscaler-addr %q: %v", addr, err)}
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, UsageError{fmt.Sprintf("--autoscaler-addr %q: port: %v", addr, err)}
	}
	return &autoscaling.LeaderEndpoint{Namespace: namespace, Service: service, IP: ip, Port: int32(p), PortName: "http"}, nil
}

// addToManager adds the autoscaler and the health and readiness checks.
func addToManager(mgr ctrl.Manager, as *autoscaling.Autoscaler) error {
	if err := mgr.Add(as); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", func(*http.Request) error { return nil }); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("ping", func(*http.Request) error { return nil })
}
