package modelservice

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"knative.dev/pkg/kmeta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// RBAC of what this reconciler does (make generate writes the controller's
// roles in config/ from these markers): ModelServices in, ModelRevisions
// made, labelled and collected, events on the ModelService.
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelservices,verbs=get;list;watch
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelservices/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelservices/finalizers,verbs=update
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelrevisions,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;update;patch

// Reconciler turns ModelServices into ModelRevisions and resolved traffic.
type Reconciler struct {
	Client client.Client
	Events events.EventRecorder
	// BaseURL is the OpenAI API base of the activators, for status URLs,
	// e.g. http://activator.kvasir-serving.svc.cluster.local/v1.
	BaseURL string
	// KeepRevisions is how many unreferenced revisions are kept (newest
	// first) for rollback; older ones are deleted. Default 2.
	KeepRevisions int
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// SetupWithManager registers the reconciler (ModelServices and the
// revisions they own).
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.ModelService{}).
		Owns(&v1alpha1.ModelRevision{}).
		Owns(&corev1.ConfigMap{}).
		Named("modelservice").
		Complete(r)
}

// snapshot is what a revision of ms freezes.
func snapshot(ms *v1alpha1.ModelService) v1alpha1.ModelRevisionSpec {
	return v1alpha1.ModelRevisionSpec{RevisionTemplate: *ms.Spec.Template.DeepCopy(), Model: ms.Spec.Model,
		LoRAAdapters: slices.Clone(ms.Spec.LoRAAdapters)}
}

// sameSnapshot compares two revision specs, ignoring the externally set
// replica count, and which LoRA adapters they list: only whether the
// engines run with LoRA at all makes a revision; the adapters themselves
// are loaded and unloaded at run time (the service's ConfigMap).
func sameSnapshot(a, b v1alpha1.ModelRevisionSpec) bool {
	a.Replicas, b.Replicas = nil, nil
	if (len(a.LoRAAdapters) > 0) == (len(b.LoRAAdapters) > 0) {
		a.LoRAAdapters, b.LoRAAdapters = nil, nil
	}
	return equality.Semantic.DeepEqual(a, b)
}

func generation(rev *v1alpha1.ModelRevision) int {
	n, _ := strconv.Atoi(rev.Labels[v1alpha1.LabelRevisionGeneration])
	return n
}

// Reconcile implements reconcile.Reconciler: it fetches the service,
// defaults and validates it, makes its revisions, keeps its LoRA ConfigMap,
// resolves its traffic, collects old revisions and writes its status.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	ms := &v1alpha1.ModelService{}
	if err := r.Client.Get(ctx, req.NamespacedName, ms); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	before := ms.Status.DeepCopy()
	if !prepare(ms) {
		return reconcile.Result{}, r.updateStatus(ctx, ms, before)
	}
	revs, err := r.reconcileRevisions(ctx, ms)
	if err != nil {
		return reconcile.Result{}, err
	}
	// After the revisions: a ConfigMap of that name that is not ours must
	// not keep the service from its revisions.
	if err := r.reconcileLoRA(ctx, ms); err != nil {
		return reconcile.Result{}, err
	}
	latestReady := propagateLatest(ms, revs)
	targets, routed, err := r.reconcileTraffic(ctx, ms, revs, latestReady)
	if err != nil {
		return reconcile.Result{}, err
	}
	if routed { // a mistake in spec.traffic collects no revision
		if err := r.collect(ctx, ms, revs, targets, latestReady); err != nil {
			return reconcile.Result{}, err
		}
	}
	return reconcile.Result{}, r.updateStatus(ctx, ms, before)
}

// prepare defaults ms and initializes its status; it is false, with the
// revisions marked failed, when the spec is invalid.
func prepare(ms *v1alpha1.ModelService) bool {
	ms.SetDefaults()
	ms.Status.InitializeConditions()
	ms.Status.ObservedGeneration = ms.Generation
	if ferr := ms.Validate(); ferr != nil {
		ms.Status.MarkRevisionsFailed("InvalidSpec", "%v", ferr)
		return false
	}
	return true
}

// reconcileRevisions returns the revisions of ms, oldest first, after
// making a new one when the latest does not match the spec, and gives
// every one the service's autoscaler class.
func (r *Reconciler) reconcileRevisions(ctx context.Context, ms *v1alpha1.ModelService) ([]*v1alpha1.ModelRevision, error) {
	revs, err := r.listRevisions(ctx, ms)
	if err != nil {
		return nil, err
	}
	want := snapshot(ms)
	if len(revs) == 0 || !sameSnapshot(revs[len(revs)-1].Spec, want) {
		gen := 1
		if len(revs) > 0 {
			gen = generation(revs[len(revs)-1]) + 1
		}
		rev := newRevision(ms, gen, want)
		if err := r.Client.Create(ctx, rev); err != nil {
			return nil, fmt.Errorf("creating revision %s: %w", rev.Name, err)
		}
		r.event(ms, rev, corev1.EventTypeNormal, "Created", "Created revision %s", rev.Name)
		revs = append(revs, rev)
	}
	if err := r.syncAutoscalerClass(ctx, ms, revs); err != nil {
		return nil, err
	}
	return revs, nil
}

// listRevisions returns the revisions ms controls, by generation.
func (r *Reconciler) listRevisions(ctx context.Context, ms *v1alpha1.ModelService) ([]*v1alpha1.ModelRevision, error) {
	list := &v1alpha1.ModelRevisionList{}
	if err := r.Client.List(ctx, list, client.InNamespace(ms.Namespace), client.MatchingLabels{v1alpha1.LabelService: ms.Name}); err != nil {
		return nil, fmt.Errorf("listing revisions: %w", err)
	}
	revs := make([]*v1alpha1.ModelRevision, 0, len(list.Items))
	for i := range list.Items {
		if metav1.IsControlledBy(&list.Items[i], ms) {
			revs = append(revs, &list.Items[i])
		}
	}
	slices.SortFunc(revs, func(a, b *v1alpha1.ModelRevision) int { return generation(a) - generation(b) })
	return revs, nil
}

// newRevision is generation gen of ms, freezing want, defaulted.
func newRevision(ms *v1alpha1.ModelService, gen int, want v1alpha1.ModelRevisionSpec) *v1alpha1.ModelRevision {
	rev := &v1alpha1.ModelRevision{
		ObjectMeta: metav1.ObjectMeta{
			Name:      v1alpha1.RevisionName(ms.Name, gen),
			Namespace: ms.Namespace,
			Labels: map[string]string{v1alpha1.LabelService: ms.Name,
				v1alpha1.LabelRevisionGeneration: strconv.Itoa(gen)},
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(ms)},
		},
		Spec: want,
	}
	if class := ms.Annotations[v1alpha1.AnnotationAutoscalerClass]; class != "" {
		rev.Annotations = map[string]string{v1alpha1.AnnotationAutoscalerClass: class}
	}
	// The serving role starts at its initial scale, at least its
	// minScale; the autoscaler (or an external one) moves it from there.
	rev.SetDefaults()
	if sc := rev.Spec.ServingScaling(); sc.MinScale != nil && *sc.MinScale > *rev.Spec.Replicas {
		n := *sc.MinScale
		rev.Spec.Replicas = &n
	}
	return rev
}

// syncAutoscalerClass makes the autoscaler class follow the service on
// every revision.
func (r *Reconciler) syncAutoscalerClass(ctx context.Context, ms *v1alpha1.ModelService, revs []*v1alpha1.ModelRevision) error {
	class := ms.Annotations[v1alpha1.AnnotationAutoscalerClass]
	for _, rev := range revs {
		if rev.Annotations[v1alpha1.AnnotationAutoscalerClass] == class {
			continue
		}
		patch := client.MergeFrom(rev.DeepCopy())
		if class == "" {
			delete(rev.Annotations, v1alpha1.AnnotationAutoscalerClass)
		} else {
			if rev.Annotations == nil {
				rev.Annotations = map[string]string{}
			}
			rev.Annotations[v1alpha1.AnnotationAutoscalerClass] = class
		}
		if err := r.Client.Patch(ctx, rev, patch); err != nil {
			return fmt.Errorf("revision %s: autoscaler class: %w", rev.Name, err)
		}
	}
	return nil
}

// propagateLatest sets the latest created and latest ready revisions in
// the status, with the latest's readiness, and returns the latest ready.
func propagateLatest(ms *v1alpha1.ModelService, revs []*v1alpha1.ModelRevision) string {
	latest := revs[len(revs)-1]
	ms.Status.LatestCreatedRevisionName = latest.Name
	ms.Status.PropagateRevisionStatus(latest.Name, &latest.Status)
	ms.Status.LatestReadyRevisionName = latestReadyRevision(revs, ms.Status.LatestReadyRevisionName)
	return ms.Status.LatestReadyRevisionName
}

// latestReadyRevision is the newest of revs that is ready or was the
// latest ready (current): the latest ready revision only moves forward, as
// in Knative. A newer revision that turns ready takes over, and one that
// is not ready for a while (waking from zero, a replica replaced) hands no
// traffic back to an older one.
func latestReadyRevision(revs []*v1alpha1.ModelRevision, current string) string {
	for i := len(revs) - 1; i >= 0; i-- {
		if revs[i].IsReady() || revs[i].Name == current {
			return revs[i].Name
		}
	}
	return ""
}

// reconcileTraffic resolves spec.traffic into the status and labels every
// revision with its routing state. routed is false when spec.traffic is
// wrong: the status says so, and routing states stay as they are, since a
// mistake in spec.traffic must not scale down, nor collect, what serves.
func (r *Reconciler) reconcileTraffic(ctx context.Context, ms *v1alpha1.ModelService, revs []*v1alpha1.ModelRevision,
	latestReady string) (targets []traffic.Target, routed bool, err error) {
	known := func(name string) bool {
		return slices.ContainsFunc(revs, func(rev *v1alpha1.ModelRevision) bool { return rev.Name == name })
	}
	ms.Status.URL = r.BaseURL
	targets, err = traffic.Resolve(ms.Spec.Traffic, latestReady, known)
	switch {
	case err != nil && latestReady == "" && len(ms.Spec.Traffic) == 0:
		ms.Status.MarkTrafficNotReady(v1alpha1.ReasonDeploying, "no revision is ready yet")
		return targets, true, r.markRouting(ctx, ms, revs, nil, latestReady)
	case err != nil:
		ms.Status.MarkTrafficFailed("TrafficInvalid", "%v", err)
		return nil, false, nil
	}
	ms.Status.SetTraffic(r.statusTraffic(ms, targets))
	ms.Status.MarkTrafficReady()
	return targets, true, r.markRouting(ctx, ms, revs, targets, latestReady)
}

// statusTraffic renders resolved targets for the status, with a URL per
// tag: the model named with its tag under the activators' API base.
func (r *Reconciler) statusTraffic(ms *v1alpha1.ModelService, targets []traffic.Target) []v1alpha1.TrafficTarget {
	out := make([]v1alpha1.TrafficTarget, 0, len(targets))
	for _, t := range targets {
		pct := int64(t.Percent)
		tt := v1alpha1.TrafficTarget{RevisionName: t.Revision, Percent: &pct, Tag: t.Tag}
		if t.Tag != "" && r.BaseURL != "" {
			tt.URL = r.BaseURL + "/models/" + ms.Spec.Model + "@" + t.Tag
		}
		out = append(out, tt)
	}
	return out
}

// markRouting labels every revision with its routing state: active when a
// traffic target names it or when it is the latest created and not ready
// yet (it must start to become ready), reserve otherwise.
func (r *Reconciler) markRouting(ctx context.Context, ms *v1alpha1.ModelService, revs []*v1alpha1.ModelRevision,
	targets []traffic.Target, latestReady string) error {
	ref := traffic.Referenced(targets)
	latest := revs[len(revs)-1].Name
	for _, rev := range revs {
		state := v1alpha1.RoutingStateReserve
		if ref[rev.Name] || (rev.Name == latest && latest != latestReady) {
			state = v1alpha1.RoutingStateActive
		}
		if rev.Labels[v1alpha1.LabelRoutingState] == state {
			continue
		}
		patch := client.MergeFrom(rev.DeepCopy())
		if rev.Labels == nil {
			rev.Labels = map[string]string{}
		}
		rev.Labels[v1alpha1.LabelRoutingState] = state
		if err := r.Client.Patch(ctx, rev, patch); err != nil {
			return fmt.Errorf("revision %s: routing state: %w", rev.Name, err)
		}
		if state == v1alpha1.RoutingStateReserve {
			r.event(ms, rev, corev1.EventTypeNormal, "RevisionReserved", "Revision %s takes no traffic: kept for rollback at zero replicas", rev.Name)
		}
	}
	return nil
}

// collect deletes revisions that no traffic names, are neither the latest
// created nor the latest ready, beyond the KeepRevisions newest of them.
func (r *Reconciler) collect(ctx context.Context, ms *v1alpha1.ModelService, revs []*v1alpha1.ModelRevision, targets []traffic.Target, latestReady string) error {
	keep := r.KeepRevisions
	if keep == 0 {
		keep = 2
	}
	ref := traffic.Referenced(targets)
	var unreferenced []*v1alpha1.ModelRevision
	for _, rev := range revs[:len(revs)-1] { // never the latest created
		if !ref[rev.Name] && rev.Name != latestReady {
			unreferenced = append(unreferenced, rev)
		}
	}
	for len(unreferenced) > keep {
		old := unreferenced[0]
		unreferenced = unreferenced[1:]
		if err := r.Client.Delete(ctx, old); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting old revision %s: %w", old.Name, err)
		}
		r.event(ms, old, corev1.EventTypeNormal, "Deleted", "Deleted unreferenced revision %s", old.Name)
	}
	return nil
}

func (r *Reconciler) updateStatus(ctx context.Context, ms *v1alpha1.ModelService, before *v1alpha1.ModelServiceStatus) error {
	if equality.Semantic.DeepEqual(before, &ms.Status) {
		return nil
	}
	if err := r.Client.Status().Update(ctx, ms); err != nil {
		return fmt.Errorf("updating status: %w", err)
	}
	was, now := before.GetCondition(v1alpha1.ModelServiceConditionReady), ms.Status.GetCondition(v1alpha1.ModelServiceConditionReady)
	if kind, reason, note, ok := reconciler.ReadyEvent(was, now); ok {
		r.event(ms, nil, kind, reason, "%s", note)
	}
	if before.TrafficSummary != ms.Status.TrafficSummary && ms.Status.TrafficSummary != "" {
		r.event(ms, nil, corev1.EventTypeNormal, "TrafficChanged", "Traffic: %s", ms.Status.TrafficSummary)
	}
	return nil
}

// event records an event on ms; related, when not nil, is the object
// acted on (it also keeps events of one reason about different objects
// from being folded into one series).
func (r *Reconciler) event(ms *v1alpha1.ModelService, related runtime.Object, kind, reason, format string, args ...any) {
	if r.Events != nil {
		r.Events.Eventf(ms, related, kind, reason, "Reconcile", format, args...)
	}
}

// reconcileLoRA keeps the ConfigMap of the service's LoRA adapters as the
// spec says, once the service has had adapters; the queue-proxies of its
// revisions load and unload adapters to match it.
func (r *Reconciler) reconcileLoRA(ctx context.Context, ms *v1alpha1.ModelService) error {
	want, err := resources.MakeLoRAConfigMap(ms)
	if err != nil {
		return fmt.Errorf("LoRA adapters ConfigMap: %w", err)
	}
	have := &corev1.ConfigMap{}
	err = r.Client.Get(ctx, client.ObjectKeyFromObject(want), have)
	switch {
	case apierrors.IsNotFound(err) && len(ms.Spec.LoRAAdapters) == 0:
		return nil // no adapters, ever or any more: no ConfigMap until there are
	case apierrors.IsNotFound(err):
		if err := r.Client.Create(ctx, want); err != nil {
			return fmt.Errorf("creating ConfigMap %s: %w", want.Name, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("getting ConfigMap %s: %w", want.Name, err)
	case !metav1.IsControlledBy(have, ms):
		return fmt.Errorf("ConfigMap %s exists and is not this ModelService's", want.Name)
	case maps.Equal(have.Data, want.Data):
		return nil
	}
	have.Data = want.Data
	if err := r.Client.Update(ctx, have); err != nil {
		return fmt.Errorf("updating ConfigMap %s: %w", want.Name, err)
	}
	return nil
}
