package autoscaling

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
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
	poke      chan struct{}
	roles     map[fleet.Key]*roleState
}

var (
	_ manager.Runnable               = (*Autoscaler)(nil)
	_ manager.LeaderElectionRunnable = (*Autoscaler)(nil)
)

// roleState is one revision role under the autoscaler.
type roleState struct {
	uid     types.UID
	decider *autoscaler.Decider
	rate    autoscaler.TokenRate
	ratio   *autoscaler.Ratio
	placed  int    // replicas last applied
	message string // the last unplaceable message, "" when all fit
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

// role is one revision role in one pass.
type role struct {
	key      fleet.Key
	rev      *v1alpha1.ModelRevision
	name     string // fleet.Role*
	state    *roleState
	deps     []*appsv1.Deployment // per variant, cheapest first
	variants []autoscaler.Variant
	ready    int
	dec      autoscaler.Decision
}

func (a *Autoscaler) tick(ctx context.Context) error {
	now := a.Now()
	var revs v1alpha1.ModelRevisionList
	if err := a.Client.List(ctx, &revs); err != nil {
		return fmt.Errorf("listing revisions: %w", err)
	}
	var nodes corev1.NodeList
	if err := a.Client.List(ctx, &nodes); err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	var pods corev1.PodList
	if err := a.Client.List(ctx, &pods); err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	free := FreeAccelerators(nodes.Items, pods.Items)
	a.followPods(ctx, revs.Items, pods.Items)
	demand := a.collector.demand()
	podStats := a.pods.stats()
	if usesResourceMetrics(revs.Items) {
		a.usage.refresh(ctx, now)
	}

	roles := map[fleet.Key]*role{}
	for i := range revs.Items {
		rev := &revs.Items[i]
		if rev.DeletionTimestamp != nil {
			continue
		}
		for _, name := range names.Roles(rev) {
			r, err := a.observe(ctx, rev, name, now, demand, podStats)
			if err != nil {
				a.Log.Warn("autoscaler skips a revision role", slog.String("revision", rev.Namespace+"/"+rev.Name),
					slog.String("role", fleet.RoleLabel(name)), slog.Any("error", err))
				continue
			}
			if r != nil {
				roles[r.key] = r
			}
		}
	}
	for key := range a.roles {
		if _, ok := roles[key]; !ok {
			delete(a.roles, key)
			a.metrics.forget(key)
		}
	}
	reserve(free, roles, pods.Items)
	// Prefill follows decode (to zero together, within the ratio).
	want := make(map[fleet.Key]autoscaler.Decision, len(roles))
	for k, r := range roles {
		want[k] = r.dec
	}
	autoscaler.CoupleAll(want, func(k fleet.Key) (*autoscaler.Ratio, func(int) int) {
		return roles[k].state.ratio, roles[k].state.decider.Clamp
	})
	for k, dec := range want {
		roles[k].dec = dec
	}
	order := slices.SortedFunc(maps.Keys(roles), func(x, y fleet.Key) int {
		px := autoscaler.Priority(roles[x].state.placed, roles[x].dec.Desired)
		py := autoscaler.Priority(roles[y].state.placed, roles[y].dec.Desired)
		return cmp.Or(cmp.Compare(px, py), cmp.Compare(x.String(), y.String()))
	})
	byRev := map[types.UID][]*role{}
	var errs []error
	for _, key := range order {
		r := roles[key]
		if err := a.apply(ctx, r, free); err != nil {
			errs = append(errs, err)
		}
		byRev[r.rev.UID] = append(byRev[r.rev.UID], r)
	}
	for _, rs := range byRev {
		if err := a.report(ctx, rs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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

// reserve takes from free what the Deployments already asked for and have
// no pod yet: their pods are on the way (the ReplicaSet controller makes
// them a moment later), and nothing else may claim that capacity.
func reserve(free map[string]int, roles map[fleet.Key]*role, pods []corev1.Pod) {
	have := map[string]int{} // namespace/revision/role/variant → pods
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		l := p.Labels
		have[p.Namespace+"/"+l[v1alpha1.LabelRevision]+"/"+l[v1alpha1.LabelRole]+"/"+l[v1alpha1.LabelVariant]]++
	}
	for _, r := range roles {
		for _, v := range r.variants {
			missing := v.Current - have[r.rev.Namespace+"/"+r.rev.Name+"/"+fleet.RoleLabel(r.name)+"/"+v.Name]
			for res, n := range v.Need {
				if missing > 0 {
					free[res] = max(free[res]-missing*n, 0)
				}
			}
		}
	}
}

// observe gathers one revision role's state and takes its decision; nil
// when its Deployments do not exist yet.
func (a *Autoscaler) observe(ctx context.Context, rev *v1alpha1.ModelRevision, name string, now time.Time,
	demand map[fleet.Key]demand, podStats map[fleet.Key][]*stats.Stat) (*role, error) {
	key := keyOf(rev, name)
	r := &role{key: key, rev: rev, name: name, variants: autoscaler.VariantsOf(&rev.Spec.RevisionTemplate)}
	current := 0
	for i, v := range resources.Variants(rev) {
		variant := ""
		if v != nil {
			variant = v.Name
		}
		d := &appsv1.Deployment{}
		err := a.Client.Get(ctx, client.ObjectKey{Namespace: rev.Namespace, Name: names.Deployment(rev, name, variant)}, d)
		if apierrs.IsNotFound(err) {
			return nil, nil // the revision reconciler has not made it yet
		}
		if err != nil {
			return nil, fmt.Errorf("getting deployment: %w", err)
		}
		r.deps = append(r.deps, d)
		n := 0
		if d.Spec.Replicas != nil {
			n = int(*d.Spec.Replicas)
		}
		r.variants[i].Current = n
		current += n
		r.ready += int(d.Status.ReadyReplicas)
	}

	st := a.roles[key]
	if st == nil || st.uid != rev.UID {
		sc := rev.Spec.RoleScaling(name)
		dec, err := autoscaler.NewDecider(autoscaler.ConfigOf(sc, autoscaler.InitialScale(sc, 0)), now)
		if err != nil {
			return nil, fmt.Errorf("spec.scaling: %w", err)
		}
		// The reconciler created the Deployments at the initial scale (or
		// this is a restart): carry on from what runs.
		dec.Resume(current)
		st = &roleState{uid: rev.UID, decider: dec, placed: current}
		if name == fleet.RolePrefill {
			st.ratio = autoscaler.RatioOf(rev.Spec.Roles)
		}
		a.roles[key] = st
	}
	r.state = st
	d := demand[key]
	sig := st.rate.Observe(d.InFlight, d.Buffered, podStats[key], now)
	use := a.usage.of(key, now)
	sig.CPU, sig.MemoryGiB = use.CPU, use.MemoryGiB
	st.decider.Record(now, sig)
	r.dec = st.decider.Decide(now, r.ready, float64(d.Buffered), float64(d.InFlight))
	if rev.Annotations[v1alpha1.AnnotationAutoscalerClass] == v1alpha1.AutoscalerClassExternal &&
		rev.Spec.Replicas != nil && name != fleet.RolePrefill {
		// An external scaler (HorizontalPodAutoscaler, KEDA, kubectl
		// scale) writes the revision's scale subresource: its count,
		// placed like ours.
		r.dec = autoscaler.Decision{Desired: int(*rev.Spec.Replicas), Reason: "spec.replicas, set through the revision's scale subresource"}
	}
	if rev.Labels[v1alpha1.LabelRoutingState] == v1alpha1.RoutingStateReserve {
		// No traffic can reach it: it waits for a rollback at zero.
		r.dec = autoscaler.Decision{Desired: 0, Reason: "no traffic routes to the revision"}
	}
	a.metrics.observe(key, sig, r.dec)
	return r, nil
}

// apply places a role's decision on its variants within free (which it
// updates) and scales the Deployments that change.
func (a *Autoscaler) apply(ctx context.Context, r *role, free map[string]int) error {
	p := autoscaler.Place(r.variants, free, r.dec.Desired)
	for i, v := range r.variants {
		for res, n := range v.Need {
			free[res] -= (p.Counts[i] - v.Current) * n // growth takes, shrinking gives back
		}
	}
	var errs []error
	for i, d := range r.deps {
		variant := r.variants[i].Name
		a.metrics.placed(r.key, variant, p.Counts[i], int(d.Status.ReadyReplicas))
		if p.Counts[i] == r.variants[i].Current {
			continue
		}
		if err := a.scale(ctx, d, p.Counts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	a.metrics.unplaceable.With(labelsOf(r.key)).Set(float64(p.Unplaceable))
	total := p.Total()
	if total != r.state.placed && len(errs) == 0 {
		a.Log.Info("autoscaler", slog.String("revision", r.rev.Namespace+"/"+r.rev.Name), slog.String("role", fleet.RoleLabel(r.name)),
			slog.Int("from", r.state.placed), slog.Int("to", total), slog.Bool("panic", r.dec.Panic), slog.String("reason", r.dec.Reason))
		a.event(r.rev, corev1.EventTypeNormal, "Scaled", "Scaled %s from %d to %d replicas: %s", fleet.RoleLabel(r.name), r.state.placed, total, r.dec.Reason)
		r.state.placed = total
	}
	msg := p.Message()
	if msg != "" && msg != r.state.message {
		a.event(r.rev, corev1.EventTypeWarning, v1alpha1.ReasonInsufficientAccelerators, "%s: %s", fleet.RoleLabel(r.name), msg)
	}
	r.state.message = msg
	return errors.Join(errs...)
}

// scale sets a Deployment's replicas through its scale subresource.
func (a *Autoscaler) scale(ctx context.Context, d *appsv1.Deployment, n int) error {
	sc := &autoscalingv1.Scale{}
	if err := a.Client.SubResource("scale").Get(ctx, d, sc); err != nil {
		return fmt.Errorf("reading the scale of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	if int(sc.Spec.Replicas) == n {
		return nil
	}
	sc.Spec.Replicas = int32(n)
	if err := a.Client.SubResource("scale").Update(ctx, d, client.WithSubResourceBody(sc)); err != nil {
		return fmt.Errorf("scaling deployment %s/%s to %d: %w", d.Namespace, d.Name, n, err)
	}
	return nil
}

// report sets a revision's CapacityAvailable condition from its roles'
// placement.
func (a *Autoscaler) report(ctx context.Context, rs []*role) error {
	rev := rs[0].rev
	var missing []string
	for _, r := range rs {
		if r.state.message != "" {
			missing = append(missing, fleet.RoleLabel(r.name)+": "+r.state.message)
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
		if rev == nil || p.Status.PodIP == "" || p.DeletionTimestamp != nil ||
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
