package revision

import (
	"context"
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
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
// NetworkPolicy, its pods read to say why they do not run, its status.
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

// lwsGroupKind is the kind of a serving group's workload.
var lwsGroupKind = schema.GroupKind{Group: lwsv1.GroupVersion.Group, Kind: "LeaderWorkerSet"}

// errLWSNotInstalled is reconcileLeaderWorkerSet's error when the cluster
// does not serve the LeaderWorkerSet kind.
var errLWSNotInstalled = errors.New("the cluster has no LeaderWorkerSet API (leaderworkerset.x-k8s.io/v1)")

// Reconciler makes a ModelRevision's Deployments (LeaderWorkerSets for
// roles of serving groups) and Services exist and reports their state in
// its status.
type Reconciler struct {
	Client    client.Client
	Events    events.EventRecorder
	Resources resources.Config
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// SetupWithManager registers the reconciler: it watches revisions and the
// Deployments, Services and NetworkPolicies they own, and their
// LeaderWorkerSets when the cluster serves that kind as the manager
// starts (installed later, it takes a restart of the controller to watch
// them; until then a grouped revision says LeaderWorkerSetNotInstalled).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.ModelRevision{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&networkingv1.NetworkPolicy{})
	switch _, err := mgr.GetRESTMapper().RESTMapping(lwsGroupKind, lwsv1.GroupVersion.Version); {
	case err == nil:
		b = b.Owns(&lwsv1.LeaderWorkerSet{})
	case !meta.IsNoMatchError(err):
		return fmt.Errorf("looking up the LeaderWorkerSet API: %w", err)
	}
	return b.Named("modelrevision").Complete(r)
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

	if err := r.reconcileNetworkPolicy(ctx, rev); err != nil {
		if apierrs.IsConflict(err) {
			return reconcile.Result{}, err
		}
		rev.Status.MarkResourcesUnavailable("ReconcileFailed", "%v", err)
		_ = r.updateStatus(ctx, rev, before)
		return reconcile.Result{}, err
	}
	var serving []workload
	for _, role := range names.Roles(rev) {
		ds, err := r.reconcileRole(ctx, rev, role)
		if apierrs.IsConflict(err) {
			return reconcile.Result{}, err // another writer came first (the autoscaler): retried, nothing to report
		}
		if errors.Is(err, errLWSNotInstalled) {
			// Not retried: nothing changes until LWS is installed (and
			// the controller restarted, to watch its sets).
			rev.Status.MarkResourcesUnavailable(ReasonLeaderWorkerSetNotInstalled,
				"role %s runs serving groups of several pods, which need LeaderWorkerSet (sigs.k8s.io/lws v0.7.0): "+
					"install it beside Kvasir and restart kvasir-controller (docs/kubernetes.md, \"Serving groups\")", fleet.RoleLabel(role))
			return reconcile.Result{}, r.updateStatus(ctx, rev, before)
		}
		if err != nil {
			rev.Status.MarkResourcesUnavailable("ReconcileFailed", "%v", err)
			_ = r.updateStatus(ctx, rev, before)
			return reconcile.Result{}, err
		}
		if role == fleet.RoleUnified || role == fleet.RoleDecode {
			serving = ds
		}
	}
	if err := r.observe(ctx, rev, serving); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, r.updateStatus(ctx, rev, before)
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
	desired, ready int32
	// stalled is the message of a rollout past its progress deadline.
	stalled string
}

func deploymentWorkload(d *appsv1.Deployment) workload {
	w := workload{ready: d.Status.ReadyReplicas}
	if d.Spec.Replicas != nil {
		w.desired = *d.Spec.Replicas
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Reason == "ProgressDeadlineExceeded" {
			w.stalled = c.Message
		}
	}
	return w
}

// lwsWorkload counts groups: a LeaderWorkerSet's readyReplicas are its
// groups whose every pod is ready.
func lwsWorkload(l *lwsv1.LeaderWorkerSet) workload {
	w := workload{ready: l.Status.ReadyReplicas}
	if l.Spec.Replicas != nil {
		w.desired = *l.Spec.Replicas
	}
	return w
}

// reconcileRole makes a role's Deployments or, for serving groups,
// LeaderWorkerSets (one per accelerator variant) and its Service exist.
func (r *Reconciler) reconcileRole(ctx context.Context, rev *v1alpha1.ModelRevision, role string) ([]workload, error) {
	var out []workload
	for i, v := range resources.Variants(rev) {
		initial := int32(0) // the cheapest variant starts; the autoscaler spills
		if i == 0 {
			initial = initialReplicas(rev, role)
		}
		if resources.Grouped(rev, role, v) {
			l, err := r.reconcileLeaderWorkerSet(ctx, rev, role, v, initial)
			if err != nil {
				return nil, err
			}
			out = append(out, lwsWorkload(l))
			continue
		}
		d, err := r.reconcileDeployment(ctx, rev, role, v, initial)
		if err != nil {
			return nil, err
		}
		out = append(out, deploymentWorkload(d))
	}
	svc := resources.MakeService(rev, role)
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(svc), &corev1.Service{}); apierrs.IsNotFound(err) {
		if err := r.Client.Create(ctx, svc); err != nil {
			return nil, fmt.Errorf("creating service %s: %w", svc.Name, err)
		}
		r.event(rev, svc, corev1.EventTypeNormal, "Created", "Created service %s", svc.Name)
	} else if err != nil {
		return nil, fmt.Errorf("getting service %s: %w", svc.Name, err)
	}
	return out, nil
}

// reconcileNetworkPolicy makes the revision's NetworkPolicy exist as the
// builder makes it (its pods are not created before it is).
func (r *Reconciler) reconcileNetworkPolicy(ctx context.Context, rev *v1alpha1.ModelRevision) error {
	want := resources.MakeNetworkPolicy(rev, r.Resources)
	have := &networkingv1.NetworkPolicy{}
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(want), have); {
	case apierrs.IsNotFound(err):
		if err := r.Client.Create(ctx, want); err != nil {
			return fmt.Errorf("creating network policy %s: %w", want.Name, err)
		}
		r.event(rev, want, corev1.EventTypeNormal, "Created", "Created network policy %s", want.Name)
		return nil
	case err != nil:
		return fmt.Errorf("getting network policy %s: %w", want.Name, err)
	}
	if !equality.Semantic.DeepDerivative(want.Spec, have.Spec) {
		have.Spec = want.Spec
		if err := r.Client.Update(ctx, have); err != nil {
			return fmt.Errorf("updating network policy %s: %w", want.Name, err)
		}
	}
	return nil
}

func (r *Reconciler) reconcileDeployment(ctx context.Context, rev *v1alpha1.ModelRevision, role string,
	v *v1alpha1.AcceleratorVariant, initial int32) (*appsv1.Deployment, error) {
	want, err := resources.MakeDeployment(rev, role, v, initial, r.Resources)
	if err != nil {
		return nil, err
	}
	have := &appsv1.Deployment{}
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(want), have); {
	case apierrs.IsNotFound(err):
		if err := r.Client.Create(ctx, want); err != nil {
			return nil, fmt.Errorf("creating deployment %s: %w", want.Name, err)
		}
		r.event(rev, want, corev1.EventTypeNormal, "Created", "Created deployment %s", want.Name)
		return want, nil
	case err != nil:
		return nil, fmt.Errorf("getting deployment %s: %w", want.Name, err)
	}
	want.Spec.Replicas = have.Spec.Replicas // the autoscaler's, through the scale subresource
	if !equality.Semantic.DeepDerivative(want.Spec, have.Spec) {
		have.Spec = want.Spec
		if err := r.Client.Update(ctx, have); err != nil {
			return nil, fmt.Errorf("updating deployment %s: %w", want.Name, err)
		}
	}
	return have, nil
}

// reconcileLeaderWorkerSet makes a grouped role's LeaderWorkerSet on
// variant v exist as the builder makes it, keeping the replicas (groups)
// the autoscaler set through its scale subresource. errLWSNotInstalled
// when the cluster has no such kind.
func (r *Reconciler) reconcileLeaderWorkerSet(ctx context.Context, rev *v1alpha1.ModelRevision, role string,
	v *v1alpha1.AcceleratorVariant, initial int32) (*lwsv1.LeaderWorkerSet, error) {
	want, err := resources.MakeLeaderWorkerSet(rev, role, v, initial, r.Resources)
	if err != nil {
		return nil, err
	}
	have := &lwsv1.LeaderWorkerSet{}
	switch err := r.Client.Get(ctx, client.ObjectKeyFromObject(want), have); {
	case meta.IsNoMatchError(err):
		return nil, fmt.Errorf("getting leader worker set %s: %w (%w)", want.Name, errLWSNotInstalled, err)
	case apierrs.IsNotFound(err):
		if err := r.Client.Create(ctx, want); err != nil {
			if meta.IsNoMatchError(err) {
				return nil, fmt.Errorf("creating leader worker set %s: %w (%w)", want.Name, errLWSNotInstalled, err)
			}
			return nil, fmt.Errorf("creating leader worker set %s: %w", want.Name, err)
		}
		r.event(rev, want, corev1.EventTypeNormal, "Created", "Created leader worker set %s", want.Name)
		return want, nil
	case err != nil:
		return nil, fmt.Errorf("getting leader worker set %s: %w", want.Name, err)
	}
	want.Spec.Replicas = have.Spec.Replicas // the autoscaler's, through the scale subresource
	if !equality.Semantic.DeepDerivative(want.Spec, have.Spec) {
		have.Spec = want.Spec
		if err := r.Client.Update(ctx, have); err != nil {
			return nil, fmt.Errorf("updating leader worker set %s: %w", want.Name, err)
		}
	}
	return have, nil
}

// observe sets the status from the serving role's workloads and pods
// (a group's workers included).
func (r *Reconciler) observe(ctx context.Context, rev *v1alpha1.ModelRevision, ds []workload) error {
	role := fleet.RoleUnified
	if rev.Spec.Roles != nil {
		role = fleet.RoleDecode
	}
	rev.Status.Selector = labels.SelectorFromSet(resources.Selector(rev, role)).String()
	desired, ready := int32(0), int32(0)
	for _, d := range ds {
		desired += d.desired
		ready += d.ready
	}
	rev.Status.SetReplicas(desired, ready)

	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.InNamespace(rev.Namespace), client.MatchingLabels(resources.Selector(rev, role))); err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	if hasGroups(rev, role) {
		workers := &corev1.PodList{}
		if err := r.Client.List(ctx, workers, client.InNamespace(rev.Namespace), client.MatchingLabels{
			v1alpha1.LabelRevision: rev.Name, resources.LabelGroupWorker: fleet.RoleLabel(role)}); err != nil {
			return fmt.Errorf("listing group workers: %w", err)
		}
		pods.Items = append(pods.Items, workers.Items...)
	}
	unavailable := false // said so in this pass (what an earlier pass said does not stick)
	if reason, msg := podTrouble(pods.Items); reason != "" {
		if reason == v1alpha1.ReasonUnschedulable {
			rev.Status.MarkResourcesUnavailable(reason, "%s", msg)
			unavailable = true
		} else {
			rev.Status.MarkContainerUnhealthy(reason, "%s", msg)
		}
	} else {
		rev.Status.MarkContainerHealthy()
	}
	for _, d := range ds {
		if d.stalled != "" {
			rev.Status.MarkResourcesUnavailable(v1alpha1.ReasonProgressDeadlineExceeded, "%s", d.stalled)
			unavailable = true
		}
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
			rev.Status.MarkResourcesAvailableUnknown(v1alpha1.ReasonDeploying, "waiting for %d replica(s) to be ready", desired)
		}
		rev.Status.MarkActivating(v1alpha1.ReasonDeploying, "waiting for a ready replica")
	}
	return nil
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
// accelerators), an image that cannot be pulled, an engine that crashes.
func podTrouble(pods []corev1.Pod) (reason, message string) {
	for _, p := range pods {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				return v1alpha1.ReasonUnschedulable, c.Message
			}
		}
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil {
				switch w.Reason {
				case "ImagePullBackOff", "ErrImagePull", "InvalidImageName":
					return v1alpha1.ReasonImagePullFailed, fmt.Sprintf("container %s: %s", cs.Name, w.Message)
				case "CrashLoopBackOff":
					return v1alpha1.ReasonEngineFailed, fmt.Sprintf("container %s keeps crashing: %s", cs.Name, strings.TrimSpace(w.Message))
				case "CreateContainerConfigError":
					// For example "container has runAsNonRoot and image will
					// run as root": a custom image without a non-root user.
					return v1alpha1.ReasonEngineFailed, fmt.Sprintf("container %s cannot start: %s", cs.Name, strings.TrimSpace(w.Message))
				}
			}
		}
	}
	return "", ""
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
