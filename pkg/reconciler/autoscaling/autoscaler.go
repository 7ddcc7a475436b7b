package autoscaling

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	metricsv1beta1 "k8s.io/metrics/pkg/client/clientset/versioned/typed/metrics/v1beta1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/fleet/kube"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// RBAC (make generate): Deployments scaled through their scale
// subresource, nodes and pods read for capacity, pods' CPU and memory use,
// the CapacityAvailable
// condition, events; the leader election Lease (and its core events).
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelrevisions,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelrevisions/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments/scale,verbs=get;update
// +kubebuilder:rbac:groups=leaderworkerset.x-k8s.io,resources=leaderworkersets,verbs=get;list;watch
// +kubebuilder:rbac:groups=leaderworkerset.x-k8s.io,resources=leaderworkersets/scale,verbs=get;update
// +kubebuilder:rbac:groups=metrics.k8s.io,resources=pods,verbs=get;list
// +kubebuilder:rbac:groups="",resources=nodes;pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=kvasir-serving,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",namespace=kvasir-serving,resources=events,verbs=create;update;patch

// Autoscaler scales every ModelRevision role on Kubernetes. It runs in the
// elected controller only (it is a leader-election runnable).
type Autoscaler struct {
	// Client reads through the manager's cache and writes to the API;
	// APIReader reads past the cache (the leader's EndpointSlice, which the
	// cache may not cover); default Client.
	Client    client.Client
	APIReader client.Reader
	Events    events.EventRecorder
	Log       *slog.Logger
	// Registerer receives the autoscaler's metrics (nil: none).
	Registerer prometheus.Registerer
	// Addr is where the activators' reports are received (default ":8080");
	// Listener, when set, is used instead.
	Addr     string
	Listener net.Listener
	// ReportToken is what a report stream must present as
	// "Authorization: Bearer <token>" (EnsureToken); required.
	ReportToken []byte
	// Tick is the decision period (default 1s); a report of demand at zero
	// triggers a decision at once.
	Tick time.Duration
	// QueueProxyPort is where the pods' queue-proxies serve their stats
	// stream (default names.QueueProxyPort).
	QueueProxyPort int
	// Endpoint, when set, makes this replica the endpoint of the Service
	// activators report to while it leads.
	Endpoint *LeaderEndpoint
	// Now is the clock (default time.Now).
	Now func() time.Time
	// ResourceMetrics reads the pods' CPU and memory use (metrics.k8s.io,
	// served by metrics-server) for the cpu and memoryGiB targets and the
	// observed metrics; nil: none. ResourceMetricsInterval is how often
	// (default DefaultResourceMetricsInterval).
	ResourceMetrics         metricsv1beta1.PodMetricsesGetter
	ResourceMetricsInterval time.Duration
	// MapAddress, when set, rewrites each pod IP before the autoscaler
	// dials its queue-proxy. For tests that run pods on loopback, which
	// pod IPs in EndpointSlices may not be.
	MapAddress func(string) string

	metrics   *metrics
	collector *collector
	pods      *podStats
	usage     *usage
	scaler    fleet.VariantScaler
	poke      chan struct{}
	roles     map[fleet.Key]*roleState
}

var (
	_ manager.Runnable               = (*Autoscaler)(nil)
	_ manager.LeaderElectionRunnable = (*Autoscaler)(nil)
)

// roleState is one revision role under the autoscaler: the pass's Role,
// for as long as the revision (by UID) lasts.
type roleState struct {
	uid  types.UID
	role *autoscaler.Role
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: one
// autoscaler acts at a time.
func (a *Autoscaler) NeedLeaderElection() bool { return true }

// Start runs the autoscaler until ctx ends.
func (a *Autoscaler) Start(ctx context.Context) error {
	if a.Log == nil {
		a.Log = slog.Default()
	}
	if a.Tick == 0 {
		a.Tick = time.Second
	}
	if a.QueueProxyPort == 0 {
		a.QueueProxyPort = names.QueueProxyPort
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.Addr == "" {
		a.Addr = ":8080"
	}
	if len(a.ReportToken) == 0 {
		return errors.New("autoscaler: no ReportToken: activators' reports would be refused")
	}
	a.metrics = newMetrics(a.Registerer)
	a.poke = make(chan struct{}, 1)
	a.collector = newCollector(a.Log, a.Now, a.wake, a.ReportToken)
	a.pods = newPodStats(a.Log)
	a.usage = &usage{client: a.ResourceMetrics, interval: cmp.Or(a.ResourceMetricsInterval, DefaultResourceMetricsInterval), log: a.Log}
	a.roles = map[fleet.Key]*roleState{}
	a.scaler = &kube.Scaler{Client: a.Client}
	defer a.pods.stop()

	ln := a.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", a.Addr); err != nil {
			return fmt.Errorf("autoscaler: listen %s: %w", a.Addr, err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+stats.ActivatorPath, a.collector)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	defer srv.Close()
	a.Log.Info("autoscaler leading", slog.String("reports", ln.Addr().String()+stats.ActivatorPath))
	if a.Endpoint != nil {
		if err := a.Endpoint.publish(ctx, a.Client, cmp.Or[client.Reader](a.APIReader, a.Client)); err != nil {
			return err
		}
	}

	t := time.NewTicker(a.Tick)
	defer t.Stop()
	for {
		if err := a.tick(ctx); err != nil && ctx.Err() == nil {
			a.Log.Error("autoscaler pass failed; next tick retries", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errCh:
			return fmt.Errorf("autoscaler: serving activator reports: %w", err)
		case <-t.C:
		case <-a.poke:
		}
	}
}

// wake asks for a decision now. Never blocks.
func (a *Autoscaler) wake() {
	select {
	case a.poke <- struct{}{}:
	default:
	}
}

// tick runs one autoscaler.Pass over every revision role: observed from
// the cluster, placed within the nodes' free accelerators, applied through
// the Deployments' scale subresource; then each revision's
// CapacityAvailable condition says what did not fit.
func (a *Autoscaler) tick(ctx context.Context) error {
	now := a.Now()
	p, err := a.list(ctx)
	if err != nil {
		return err
	}
	a.followPods(ctx, p.revs, p.pods)
	results, err := autoscaler.Pass{Observer: p, Capacity: p.free, Scaler: a.scaler, Reporter: p}.Run(ctx, now)
	if err != nil {
		return err
	}
	byRev := map[types.UID][]*role{}
	var errs []error
	for _, res := range results {
		if res.Err != nil {
			errs = append(errs, res.Err)
		}
		r := p.roles[res.Role.Key]
		byRev[r.rev.UID] = append(byRev[r.rev.UID], r)
	}
	for _, rs := range byRev {
		if err := a.report(ctx, rs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// list reads what a pass starts from: revisions, nodes and pods, and from
// the last two the free accelerators.
func (a *Autoscaler) list(ctx context.Context) (*pass, error) {
	var revs v1alpha1.ModelRevisionList
	if err := a.Client.List(ctx, &revs); err != nil {
		return nil, fmt.Errorf("listing revisions: %w", err)
	}
	var nodes corev1.NodeList
	if err := a.Client.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	var pods corev1.PodList
	if err := a.Client.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	return &pass{a: a, revs: revs.Items, pods: pods.Items, free: FreeAccelerators(nodes.Items, pods.Items),
		roles: map[fleet.Key]*role{}}, nil
}

// usesResourceMetrics tells whether a revision role scales on CPU or
// memory: only then is the resource metrics API read.
func usesResourceMetrics(revs []v1alpha1.ModelRevision) bool {
	for i := range revs {
		for _, role := range names.Roles(&revs[i]) {
			if t := revs[i].Spec.RoleScaling(role).Target; t != nil && (t.CPU != nil || t.MemoryGiB != nil) {
				return true
			}
		}
	}
	return false
}

// report sets a revision's CapacityAvailable condition from its roles'
// placement.
func (a *Autoscaler) report(ctx context.Context, rs []*role) error {
	rev := rs[0].rev
	var missing []string
	for _, r := range rs {
		if msg := r.state.role.Message; msg != "" {
			missing = append(missing, fleet.RoleLabel(r.name)+": "+msg)
		}
	}
	slices.Sort(missing)
	msg := strings.Join(missing, "; ")
	c := rev.Status.GetCondition(v1alpha1.RevisionConditionCapacityAvailable)
	switch {
	case msg == "" && (c == nil || c.IsTrue()):
		return nil // nothing to say, or said
	case msg != "" && c != nil && c.IsFalse() && c.Message == msg:
		return nil
	}
	rev = rev.DeepCopy()
	if msg == "" {
		rev.Status.MarkCapacityAvailable()
	} else {
		rev.Status.MarkCapacityUnavailable("%s", msg)
	}
	if err := a.Client.Status().Update(ctx, rev); err != nil {
		if apierrs.IsConflict(err) {
			return nil // the reconciler wrote first; the next pass retries
		}
		return fmt.Errorf("revision %s/%s status: %w", rev.Namespace, rev.Name, err)
	}
	return nil
}

// followPods subscribes to the queue-proxy of every revision pod that has
// an address.
func (a *Autoscaler) followPods(ctx context.Context, revs []v1alpha1.ModelRevision, pods []corev1.Pod) {
	known := map[string]*v1alpha1.ModelRevision{}
	for i := range revs {
		known[revs[i].Namespace+"/"+revs[i].Name] = &revs[i]
	}
	targets := map[string]podTarget{}
	for _, p := range pods {
		rev := known[p.Namespace+"/"+p.Labels[v1alpha1.LabelRevision]]
		if rev == nil || p.Labels[resources.LabelGroupWorker] != "" || // a group's worker: no queue-proxy
			p.Status.PodIP == "" || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ip := p.Status.PodIP
		if a.MapAddress != nil {
			ip = a.MapAddress(ip)
		}
		targets[p.Namespace+"/"+p.Name] = podTarget{key: keyOf(rev, fleet.RoleOfLabel(p.Labels[v1alpha1.LabelRole])),
			addr: net.JoinHostPort(ip, strconv.Itoa(a.QueueProxyPort))}
	}
	a.pods.sync(ctx, targets)
}

func (a *Autoscaler) event(rev *v1alpha1.ModelRevision, kind, reason, format string, args ...any) {
	if a.Events != nil {
		a.Events.Eventf(rev, nil, kind, reason, "Autoscale", format, args...)
	}
}

// keyOf names a revision role (fleet.Role*) as the data plane does.
func keyOf(rev *v1alpha1.ModelRevision, role string) fleet.Key {
	return fleet.Key{Namespace: rev.Namespace, Service: rev.Labels[v1alpha1.LabelService], Revision: rev.Name, Role: role}
}
