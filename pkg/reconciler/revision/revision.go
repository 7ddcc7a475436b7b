package revision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// RBAC (make generate): a revision's Deployments (LeaderWorkerSets for
// serving groups), Services and
// NetworkPolicy, its pods read and watched to say why they do not run,
// its status. The cluster's optional APIs (LeaderWorkerSet, Volcano's and
// coscheduling's PodGroups) are looked up through discovery, which needs
// no rights; no Volcano PodGroup is read. Coscheduling's PodGroups and
// the patch of gated group pods: podgroups.go.
// Nothing is deleted: owner references let the garbage collector remove
// what a deleted revision owned. Services are never changed once made.
// The finalizers subresource lets owner references block their owner's
// deletion (OwnerReferencesPermissionEnforcement).
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelrevisions,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelrevisions/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelrevisions/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=leaderworkerset.x-k8s.io,resources=leaderworkersets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;update;patch

// ReasonLeaderWorkerSetNotInstalled is the reason of a revision's
// ResourcesAvailable (so Ready) condition when a role runs serving groups
// and the cluster has no LeaderWorkerSet API (docs/kubernetes.md says how
// to install it).
const ReasonLeaderWorkerSetNotInstalled = "LeaderWorkerSetNotInstalled"

// errLWSNotInstalled says the cluster does not serve the LeaderWorkerSet
// kind: reconcileRole's error, or wrapped in that of a role's
// LeaderWorkerSet (lwsKind).
var errLWSNotInstalled = errors.New("the cluster has no LeaderWorkerSet API (leaderworkerset.x-k8s.io/v1)")

// Reconciler makes a ModelRevision's Deployments (LeaderWorkerSets for
// roles of serving groups) and Services exist and reports their state in
// its status.
type Reconciler struct {
	Client    client.Client
	Events    events.EventRecorder
	Resources resources.Config
	// APIRecheck is how long a look at the cluster's optional APIs
	// (LeaderWorkerSet, Volcano, scheduler-plugins' coscheduling) stands,
	// and how often a grouped revision is reconciled again to follow
	// them (one waiting for LeaderWorkerSet included). Default
	// DefaultAPIRecheck.
	APIRecheck time.Duration
	// Log receives what the reconciler finds of the cluster's APIs;
	// default: the manager's logger.
	Log *slog.Logger

	// apis looks up the cluster's optional APIs (SetupWithManager).
	apis *apiDetector
	// watchLWS starts the controller's watch of LeaderWorkerSets, once
	// the cluster serves them; lwsWatched says it runs.
	watchLWS   func() error
	lwsWatched atomic.Bool
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// SetupWithManager registers the reconciler: it watches revisions, the
// Deployments, Services and NetworkPolicies they own, and the pods
// labelled with a revision (a pod that cannot be scheduled or crashes is
// reported at once). It looks up the cluster's optional APIs (discovery,
// at most every APIRecheck) and watches the LeaderWorkerSets revisions own
// from the start when the cluster serves the kind, else from the first
// reconcile after it appears, with no restart. Grouped revisions are
// reconciled again every APIRecheck, to follow those APIs.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Log == nil {
		r.Log = slog.New(logr.ToSlogHandler(mgr.GetLogger().WithName("modelrevision")))
	}
	dc, err := discovery.NewDiscoveryClientForConfigAndClient(mgr.GetConfig(), mgr.GetHTTPClient())
	if err != nil {
		return fmt.Errorf("discovery client: %w", err)
	}
	r.apis = newAPIDetector(dc, r.APIRecheck, r.Log)
	b := ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.ModelRevision{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&networkingv1.NetworkPolicy{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(revisionOfPod),
			builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
				return o.GetLabels()[v1alpha1.LabelRevision] != ""
			})))
	if r.apis.get().LeaderWorkerSet {
		b = b.Owns(&lwsv1.LeaderWorkerSet{})
		r.lwsWatched.Store(true)
	}
	c, err := b.Named("modelrevision").Build(r)
	if err != nil {
		return err
	}
	r.watchLWS = func() error {
		return c.Watch(source.Kind(mgr.GetCache(), client.Object(&lwsv1.LeaderWorkerSet{}),
			handler.EnqueueRequestForOwner(mgr.GetScheme(), mgr.GetRESTMapper(), &v1alpha1.ModelRevision{}, handler.OnlyControllerOwner())))
	}
	return nil
}

// revisionOfPod maps a pod to the revision its label names (a DNS label;
// anything else maps to nothing).
func revisionOfPod(_ context.Context, o client.Object) []reconcile.Request {
	name := o.GetLabels()[v1alpha1.LabelRevision]
	if len(validation.IsDNS1123Label(name)) > 0 {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
}

// clusterAPIs returns the cluster's optional APIs (none before
// SetupWithManager) and, once LeaderWorkerSet is served, makes sure the
// controller watches its sets.
func (r *Reconciler) clusterAPIs() ClusterAPIs {
	if r.apis == nil {
		return ClusterAPIs{}
	}
	apis := r.apis.get()
	if apis.LeaderWorkerSet && r.watchLWS != nil && r.lwsWatched.CompareAndSwap(false, true) {
		if err := r.watchLWS(); err != nil {
			r.lwsWatched.Store(false)
			r.Log.Error("watching LeaderWorkerSets", slog.Any("error", err))
		} else {
			r.Log.Info("watching LeaderWorkerSets: the cluster serves them now")
		}
	}
	return apis
}

// recheck is APIRecheck or its default.
func (r *Reconciler) recheck() time.Duration {
	if r.APIRecheck > 0 {
		return r.APIRecheck
	}
	return DefaultAPIRecheck
}

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	rev := &v1alpha1.ModelRevision{}
	if err := r.Client.Get(ctx, req.NamespacedName, rev); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err) // deleted: owner references clean up
	}
	before := rev.Status.DeepCopy()
	rev.Status.InitializeConditions()
	rev.Status.ObservedGeneration = rev.Generation
	apis := r.clusterAPIs()
	cfg := r.Resources
	if apis.Volcano {
		cfg.GroupSchedulerName = resources.VolcanoSchedulerName
	}
	cfg.Coscheduling = apis.Coscheduling && !apis.Volcano

	if err := r.reconcileNetworkPolicy(ctx, rev); err != nil {
		if apierrs.IsConflict(err) {
			return reconcile.Result{}, err
		}
		rev.Status.MarkResourcesUnavailable("ReconcileFailed", "%v", err)
		_ = r.updateStatus(ctx, rev, before)
		return reconcile.Result{}, err
	}
	var all []workload
	for _, role := range names.Roles(rev) {
		ws, err := r.reconcileRole(ctx, rev, role, cfg, apis)
		if apierrs.IsConflict(err) {
			return reconcile.Result{}, err // another writer came first (the autoscaler): retried, nothing to report
		}
		if errors.Is(err, errLWSNotInstalled) {
			// Looked at again every APIRecheck, not in a loop: nothing
			// changes until LWS is installed.
			rev.Status.MarkResourcesUnavailable(ReasonLeaderWorkerSetNotInstalled,
				"role %s runs serving groups of several pods, which need LeaderWorkerSet (sigs.k8s.io/lws v0.7.0): "+
					"install it beside Kvasir; the controller notices within %s (docs/kubernetes.md, \"Serving groups\")",
				fleet.RoleLabel(role), r.recheck())
			return reconcile.Result{RequeueAfter: r.recheck()}, r.updateStatus(ctx, rev, before)
		}
		if err != nil {
			rev.Status.MarkResourcesUnavailable("ReconcileFailed", "%v", err)
			_ = r.updateStatus(ctx, rev, before)
			return reconcile.Result{}, err
		}
		all = append(all, ws...)
	}
	var release releaseOutcome
	if apis.Coscheduling && r.Resources.CoschedulingSchedulerName != "" {
		// Gated pods are released whenever the cluster serves coscheduling
		// and the controller uses it (those of a template made before
		// Volcano came too).
		var err error
		if release, err = r.releaseGatedPods(ctx, rev, all); err != nil {
			return reconcile.Result{}, err
		}
	}
	cos := newCoschedulingState(rev, r.Resources.CoschedulingSchedulerName, release)
	if err := r.observe(ctx, rev, all, apis, cos); err != nil {
		return reconcile.Result{}, err
	}
	var res reconcile.Result
	if resources.AnyGrouped(rev) {
		// Looked at again every APIRecheck, to follow the cluster's gang
		// scheduler coming or going (reads from the cache; nothing is
		// written unless something changed).
		res.RequeueAfter = r.recheck()
	}
	if release.stale {
		res.RequeueAfter = min(res.RequeueAfter, staleRecheck)
	}
	return res, r.updateStatus(ctx, rev, before)
}

// initialReplicas is the replica count a role's Deployment is created
// with: spec.replicas when an external scaler set it, else the revision's
// initial scale (at least its minScale, at most its maxScale:
// autoscaler.InitialScale, as in local mode). From then on the autoscaler owns
// the count (pkg/reconciler/autoscaling), placing it on the variants.
func initialReplicas(rev *v1alpha1.ModelRevision, role string) int32 {
	if rev.Spec.Replicas != nil && role != fleet.RolePrefill {
		return *rev.Spec.Replicas
	}
	sc := rev.Spec.RoleScaling(role)
	least := 0 // an explicit initialScale, even 0, stands
	if sc.InitialScale == nil {
		least = v1alpha1.DefaultInitialScale
	}
	return int32(autoscaler.InitialScale(sc, least))
}

// workload is what runs a role's replicas on one accelerator variant: a
// Deployment (replicas are pods) or a LeaderWorkerSet (replicas are
// groups).
type workload struct {
	role    string
	variant string
	replicas
	// stalled is the message of a rollout past its progress deadline.
	stalled string
	// set is the LeaderWorkerSet of a role of serving groups, nil for a
	// Deployment; size is its pods per group.
	set  *lwsv1.LeaderWorkerSet
	size int32
}

// replicas is how many replicas a workload, or a role's workloads
// together, want (spec.replicas, none when unset) and have ready: pods
// of a Deployment, groups of a LeaderWorkerSet (a LeaderWorkerSet's
// readyReplicas are its groups whose every pod is ready).
type replicas struct {
	desired int32
	ready   int32
}

// replicasOf reads a Deployment's or a LeaderWorkerSet's replicas; any
// other object has none.
func replicasOf(o client.Object) replicas {
	var spec *int32
	var out replicas
	switch o := o.(type) {
	case *appsv1.Deployment:
		spec, out.ready = o.Spec.Replicas, o.Status.ReadyReplicas
	case *lwsv1.LeaderWorkerSet:
		spec, out.ready = o.Spec.Replicas, o.Status.ReadyReplicas
	}
	out.desired = ptr.Deref(spec, 0)
	return out
}

// roleReplicas sums the replicas of a role's workloads (every variant's).
func roleReplicas(all []workload, role string) replicas {
	var out replicas
	for _, w := range all {
		if w.role == role {
			out.desired += w.desired
			out.ready += w.ready
		}
	}
	return out
}

// deploymentWorkload reads a role's Deployment: its replicas (replicasOf)
// and the message of a rollout past its progress deadline.
func deploymentWorkload(role, variant string, d *appsv1.Deployment) workload {
	w := workload{role: role, variant: variant, replicas: replicasOf(d)}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
			w.stalled = c.Message
		}
	}
	return w
}

// lwsWorkload reads a grouped role's LeaderWorkerSet: its replicas, which
// are groups (replicasOf), and its pods per group.
func lwsWorkload(role, variant string, l *lwsv1.LeaderWorkerSet) workload {
	return workload{role: role, variant: variant, replicas: replicasOf(l), set: l,
		size: ptr.Deref(l.Spec.LeaderWorkerTemplate.Size, 0)}
}

// reconcileRole makes a role's Deployments or, for serving groups,
// LeaderWorkerSets (one per accelerator variant) and its Service exist.
func (r *Reconciler) reconcileRole(ctx context.Context, rev *v1alpha1.ModelRevision, role string, cfg resources.Config,
	apis ClusterAPIs) ([]workload, error) {
	var out []workload
	for i, v := range resources.Variants(rev) {
		initial := int32(0) // the cheapest variant starts; the autoscaler spills
		if i == 0 {
			initial = initialReplicas(rev, role)
		}
		variant := ""
		if v != nil {
			variant = v.Name
		}
		if resources.Grouped(rev, role, v) {
			if r.apis != nil && !apis.LeaderWorkerSet {
				return nil, errLWSNotInstalled
			}
			l, err := reconcileVariant(ctx, r, rev, role, v, initial, cfg, resources.MakeLeaderWorkerSet, lwsKind)
			if err != nil {
				return nil, err
			}
			out = append(out, lwsWorkload(role, variant, l))
			continue
		}
		d, err := reconcileVariant(ctx, r, rev, role, v, initial, cfg, resources.MakeDeployment, deploymentKind)
		if err != nil {
			return nil, err
		}
		out = append(out, deploymentWorkload(role, variant, d))
	}
	if _, err := reconcileOwned(ctx, r, rev, resources.MakeService(rev, role), serviceKind); err != nil {
		return nil, err
	}
	return out, nil
}

// ownedKind says how reconcileOwned makes one kind of object a revision
// owns stand as the builder makes it.
type ownedKind[P client.Object] struct {
	// noun names the kind in errors and in the Created event.
	noun string
	// noMatch, when not nil, is wrapped beside the error of a get or a
	// create that fails for the cluster not serving the kind
	// (meta.IsNoMatchError).
	noMatch error
	// sync makes have (as read) what want (as built) says, keeping what
	// others own, and reports whether it changed it: then have is
	// updated. Nil for a kind never changed once made.
	sync func(have, want P) bool
}

// reconcileOwned makes want exist: it creates it (and records a Created
// event) when there is none, else brings the existing object in line
// through k.sync and updates it when that changed it. It returns the
// object as created or as read (and updated). Errors name the step and
// the object: "getting|creating|updating <noun> <name>: <error>".
func reconcileOwned[T any, P interface {
	*T
	client.Object
}](ctx context.Context, r *Reconciler, rev *v1alpha1.ModelRevision, want P, k ownedKind[P]) (P, error) {
	have := P(new(T))
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(want), have); {
	case k.noMatch != nil && meta.IsNoMatchError(err):
		return nil, fmt.Errorf("getting %s %s: %w (%w)", k.noun, want.GetName(), k.noMatch, err)
	case apierrs.IsNotFound(err):
		if err := r.Client.Create(ctx, want); err != nil {
			if k.noMatch != nil && meta.IsNoMatchError(err) {
				return nil, fmt.Errorf("creating %s %s: %w (%w)", k.noun, want.GetName(), k.noMatch, err)
			}
			return nil, fmt.Errorf("creating %s %s: %w", k.noun, want.GetName(), err)
		}
		r.event(rev, want, corev1.EventTypeNormal, "Created", "Created %s %s", k.noun, want.GetName())
		return want, nil
	case err != nil:
		return nil, fmt.Errorf("getting %s %s: %w", k.noun, want.GetName(), err)
	}
	if k.sync != nil && k.sync(have, want) {
		if err := r.Client.Update(ctx, have); err != nil {
			return nil, fmt.Errorf("updating %s %s: %w", k.noun, want.GetName(), err)
		}
	}
	return have, nil
}

// takeSpec makes *have the builder's *want when want is not within it
// (equality.Semantic.DeepDerivative: fields the builder leaves empty are
// not compared) or when force, and reports whether it did.
func takeSpec[S any](have, want *S, force bool) bool {
	if !force && equality.Semantic.DeepDerivative(*want, *have) {
		return false
	}
	*have = *want
	return true
}

// serviceKind: a role's Service is never changed once made.
var serviceKind = ownedKind[*corev1.Service]{noun: "service"}

// networkPolicyKind: the revision's NetworkPolicy takes the builder's
// spec whenever the builder's is not within it (DeepDerivative).
var networkPolicyKind = ownedKind[*networkingv1.NetworkPolicy]{
	noun: "network policy",
	sync: func(have, want *networkingv1.NetworkPolicy) bool {
		return takeSpec(&have.Spec, &want.Spec, false)
	},
}

// deploymentKind: a role's Deployment takes the builder's spec, but for
// the replicas (the autoscaler's, through the scale subresource),
// whenever the builder's is not within it (DeepDerivative).
var deploymentKind = ownedKind[*appsv1.Deployment]{
	noun: "deployment",
	sync: func(have, want *appsv1.Deployment) bool {
		want.Spec.Replicas = have.Spec.Replicas
		return takeSpec(&have.Spec, &want.Spec, false)
	},
}

// lwsKind: a grouped role's LeaderWorkerSet takes the builder's spec,
// but for the replicas (groups: the autoscaler's, through the scale
// subresource), and its exclusive-topology annotation (set or removed)
// whenever the builder's spec is not within it (DeepDerivative), its
// pods' scheduler or scheduling gates differ (sameGroupScheduling: an
// empty scheduler name or gate list in the builder's set means none,
// which DeepDerivative would not see replace "volcano" or a gate), or
// that annotation differs. errLWSNotInstalled when the cluster has no
// such kind.
var lwsKind = ownedKind[*lwsv1.LeaderWorkerSet]{
	noun:    "leader worker set",
	noMatch: errLWSNotInstalled,
	sync: func(have, want *lwsv1.LeaderWorkerSet) bool {
		want.Spec.Replicas = have.Spec.Replicas
		key := lwsv1.ExclusiveKeyAnnotationKey
		changed := !sameGroupScheduling(want, have) || want.Annotations[key] != have.Annotations[key]
		if !takeSpec(&have.Spec, &want.Spec, changed) {
			return false
		}
		if k, ok := want.Annotations[key]; ok {
			metav1.SetMetaDataAnnotation(&have.ObjectMeta, key, k)
		} else {
			delete(have.Annotations, key)
		}
		return true
	},
}

// reconcileNetworkPolicy makes the revision's NetworkPolicy exist as the
// builder makes it (its pods are not created before it is).
func (r *Reconciler) reconcileNetworkPolicy(ctx context.Context, rev *v1alpha1.ModelRevision) error {
	_, err := reconcileOwned(ctx, r, rev, resources.MakeNetworkPolicy(rev, r.Resources), networkPolicyKind)
	return err
}

// reconcileVariant builds a role's workload on variant v (build:
// resources.MakeDeployment or MakeLeaderWorkerSet) and makes it exist as
// built (reconcileOwned with k).
func reconcileVariant[T any, P interface {
	*T
	client.Object
}](ctx context.Context, r *Reconciler, rev *v1alpha1.ModelRevision, role string, v *v1alpha1.AcceleratorVariant,
	initial int32, cfg resources.Config,
	build func(*v1alpha1.ModelRevision, string, *v1alpha1.AcceleratorVariant, int32, resources.Config) (P, error),
	k ownedKind[P]) (P, error) {
	want, err := build(rev, role, v, initial, cfg)
	if err != nil {
		return nil, err
	}
	return reconcileOwned(ctx, r, rev, want, k)
}

// sameGroupScheduling reports whether two sets' pods have the same
// scheduler, "" and the default scheduler's name being the same, and the
// same scheduling gates (none and an empty list being the same).
func sameGroupScheduling(a, b *lwsv1.LeaderWorkerSet) bool {
	name := func(s string) string {
		if s == "" {
			return corev1.DefaultSchedulerName
		}
		return s
	}
	gates := func(s *corev1.PodSpec) string {
		var g []string
		for _, x := range s.SchedulingGates {
			g = append(g, x.Name)
		}
		return strings.Join(g, "\n")
	}
	sched := func(l *lwsv1.LeaderWorkerSet) [4]string {
		t := l.Spec.LeaderWorkerTemplate
		worker := &t.WorkerTemplate.Spec
		leader := worker // LWS's leaders default to the worker template
		if t.LeaderTemplate != nil {
			leader = &t.LeaderTemplate.Spec
		}
		return [4]string{name(leader.SchedulerName), name(worker.SchedulerName), gates(leader), gates(worker)}
	}
	return sched(a) == sched(b)
}

// observe sets the status from the serving role's workloads and pods,
// and from every role's serving groups (their pods, a group's workers
// included): why pods cannot run, in one path for a Deployment's pods
// and a group's (podProblem).
func (r *Reconciler) observe(ctx context.Context, rev *v1alpha1.ModelRevision, all []workload, apis ClusterAPIs,
	cos coschedulingState) error {
	role := fleet.RoleUnified
	if rev.Spec.Roles != nil {
		role = fleet.RoleDecode
	}
	rev.Status.Selector = labels.SelectorFromSet(resources.Selector(rev, role)).String()
	total := roleReplicas(all, role)
	desired, ready := total.desired, total.ready
	rev.Status.SetReplicas(desired, ready)

	// A Deployment's pods (the role's Selector, not a group's leaders,
	// which LWS labels with its set's name).
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.InNamespace(rev.Namespace), client.MatchingLabels(resources.Selector(rev, role))); err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	plain := pods.Items[:0]
	for _, p := range pods.Items {
		if _, grouped := p.Labels[lwsv1.SetNameLabelKey]; !grouped {
			plain = append(plain, p)
		}
	}
	var unschedulable, unhealthy []string
	unhealthyReason := ""
	if reason, msg := podTrouble(plain); reason == v1alpha1.ReasonUnschedulable {
		unschedulable = append(unschedulable, msg)
	} else if reason != "" {
		unhealthyReason, unhealthy = reason, append(unhealthy, msg)
	}

	// Serving groups: each set's pods, as LWS makes them.
	var statuses []v1alpha1.GroupSetStatus
	var waiting []string // the serving role's groups only not ready yet
	more := 0            // the serving role's not-ready groups left out of the lines
	var leaders []*corev1.Pod
	grouped := false
	for _, w := range all {
		if w.set == nil {
			continue
		}
		grouped = true
		list := &corev1.PodList{}
		if err := r.Client.List(ctx, list, client.InNamespace(rev.Namespace), client.MatchingLabels{
			v1alpha1.LabelRevision: rev.Name, lwsv1.SetNameLabelKey: w.set.Name}); err != nil {
			return fmt.Errorf("listing the pods of leader worker set %s: %w", w.set.Name, err)
		}
		rep := describeGroups(w.set.Name, w.size, w.desired, groupPods(list.Items, w.set.Name, w.role, w.size))
		leaders = append(leaders, rep.leaders...)
		st := v1alpha1.GroupSetStatus{Role: fleet.RoleLabel(w.role), Variant: w.variant, LeaderWorkerSet: w.set.Name,
			PodsPerGroup: w.size, Groups: w.desired, ReadyGroups: w.ready}
		for _, l := range rep.lines {
			st.NotReady = append(st.NotReady, l.text)
		}
		if rep.more > 0 {
			st.NotReady = append(st.NotReady, fmt.Sprintf("and %d more group(s) not ready", rep.more))
		}
		statuses = append(statuses, st)
		if w.role != role {
			continue // the revision's conditions are its serving role's
		}
		for _, l := range rep.lines {
			switch {
			case l.reason == v1alpha1.ReasonUnschedulable:
				unschedulable = append(unschedulable, l.text)
			case l.reason != "":
				if unhealthyReason == "" {
					unhealthyReason = l.reason
				}
				unhealthy = append(unhealthy, l.text)
			default:
				waiting = append(waiting, l.text)
			}
		}
		more += rep.more
	}
	rev.Status.Groups = statuses
	rev.Status.PodsPerGroup = podsPerGroup(rev, role)
	markGangScheduling(&rev.Status, grouped, apis, leaders, cos)

	unavailable := false // said so in this pass (what an earlier pass said does not stick)
	if len(unschedulable) > 0 {
		rev.Status.MarkResourcesUnavailable(v1alpha1.ReasonUnschedulable, "%s", joinBounded(unschedulable, more))
		unavailable = true
	}
	if len(unhealthy) > 0 {
		rev.Status.MarkContainerUnhealthy(unhealthyReason, "%s", joinBounded(unhealthy, more))
	}
	if len(unschedulable) == 0 && len(unhealthy) == 0 {
		rev.Status.MarkContainerHealthy()
	}
	for _, w := range all {
		if w.role == role && w.stalled != "" {
			rev.Status.MarkResourcesUnavailable(v1alpha1.ReasonProgressDeadlineExceeded, "%s", w.stalled)
			unavailable = true
		}
	}
	why := ""
	if len(waiting) > 0 {
		why = ": " + joinBounded(waiting, more)
	}
	capacity := rev.Status.GetCondition(v1alpha1.RevisionConditionCapacityAvailable)
	switch {
	case ready == 0 && desired == 0 && capacity != nil && capacity.IsFalse():
		// The autoscaler wants replicas and nothing can take one.
		rev.Status.MarkResourcesUnavailable(capacity.Reason, "%s", capacity.Message)
		rev.Status.MarkActivating(capacity.Reason, "%s", capacity.Message)
	case ready > 0:
		rev.Status.MarkResourcesAvailable()
		rev.Status.MarkActive()
	case desired == 0:
		rev.Status.MarkResourcesAvailable()
		rev.Status.MarkInactive(v1alpha1.ReasonNoTraffic, "scaled to zero")
	default:
		// A revision that was ready stays ready while it wakes from zero
		// or replaces a replica: only Active says it is activating.
		if ra := rev.Status.GetCondition(v1alpha1.RevisionConditionResourcesAvailable); !unavailable && (ra == nil || !ra.IsTrue()) {
			rev.Status.MarkResourcesAvailableUnknown(v1alpha1.ReasonDeploying, "waiting for %d replica(s) to be ready%s", desired, why)
		}
		rev.Status.MarkActivating(v1alpha1.ReasonDeploying, "waiting for a ready replica%s", why)
	}
	return nil
}

// joinBounded joins at most v1alpha1.MaxGroupLines lines, counting those
// left out and more.
func joinBounded(lines []string, more int) string {
	if len(lines) > v1alpha1.MaxGroupLines {
		more += len(lines) - v1alpha1.MaxGroupLines
		lines = lines[:v1alpha1.MaxGroupLines]
	}
	return joinLines(lines, more)
}

// hasGroups reports whether a role runs serving groups on any variant.
func hasGroups(rev *v1alpha1.ModelRevision, role string) bool {
	for _, v := range resources.Variants(rev) {
		if resources.Grouped(rev, role, v) {
			return true
		}
	}
	return false
}

// podTrouble finds why pods cannot run: unschedulable (no node has the
// accelerators), an image that cannot be pulled, an engine that crashes
// (the first pod's with a problem: podProblem).
func podTrouble(pods []corev1.Pod) (reason, message string) {
	for i := range pods {
		if reason, _, message := podProblem(&pods[i]); reason != "" {
			return reason, message
		}
	}
	return "", ""
}

// podProblem is why one pod cannot run: the revision's reason
// (v1alpha1.ReasonUnschedulable, ReasonImagePullFailed,
// ReasonEngineFailed), Kubernetes' own (its PodScheduled condition's or a
// container's waiting reason) and a message; all "" when it has none.
func podProblem(p *corev1.Pod) (reason, kubeReason, message string) {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return v1alpha1.ReasonUnschedulable, c.Reason, c.Message
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			switch w.Reason {
			case "ImagePullBackOff", "ErrImagePull", "InvalidImageName":
				return v1alpha1.ReasonImagePullFailed, w.Reason, fmt.Sprintf("container %s: %s", cs.Name, w.Message)
			case "CrashLoopBackOff":
				return v1alpha1.ReasonEngineFailed, w.Reason, fmt.Sprintf("container %s keeps crashing: %s", cs.Name, strings.TrimSpace(w.Message))
			case "CreateContainerConfigError":
				// For example "container has runAsNonRoot and image will
				// run as root": a custom image without a non-root user.
				return v1alpha1.ReasonEngineFailed, w.Reason, fmt.Sprintf("container %s cannot start: %s", cs.Name, strings.TrimSpace(w.Message))
			}
		}
	}
	return "", "", ""
}

func (r *Reconciler) updateStatus(ctx context.Context, rev *v1alpha1.ModelRevision, before *v1alpha1.ModelRevisionStatus) error {
	if equality.Semantic.DeepEqual(before, &rev.Status) {
		return nil
	}
	wasReady := before.GetCondition(v1alpha1.RevisionConditionReady)
	nowReady := rev.Status.GetCondition(v1alpha1.RevisionConditionReady)
	if err := r.Client.Status().Update(ctx, rev); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	if kind, reason, note, ok := reconciler.ReadyEvent(wasReady, nowReady); ok {
		r.event(rev, nil, kind, reason, "%s", note)
	}
	return nil
}

// event records an event on rev; related, when not nil, is the object
// acted on (it also keeps events of one reason about different objects
// from being folded into one series).
func (r *Reconciler) event(rev *v1alpha1.ModelRevision, related runtime.Object, kind, reason, format string, args ...any) {
	if r.Events != nil {
		r.Events.Eventf(rev, related, kind, reason, "Reconcile", format, args...)
	}
}
