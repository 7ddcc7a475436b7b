package autoscaling

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// pass is one tick's view of the cluster for autoscaler.Pass: its
// Observer (revisions, their Deployments, demand and pods' reports), its
// Capacity (the nodes' free accelerators, less the reserve) and its
// Reporter (metrics, events and logs).
type pass struct {
	a     *Autoscaler
	revs  []v1alpha1.ModelRevision
	pods  []corev1.Pod
	free  autoscaler.Pool
	roles map[fleet.Key]*role // observed
}

var (
	_ autoscaler.Observer = (*pass)(nil)
	_ autoscaler.Reporter = (*pass)(nil)
)

// role is one revision role in one pass.
type role struct {
	key   fleet.Key
	rev   *v1alpha1.ModelRevision
	name  string // fleet.Role*
	state *roleState
	ready []int // ready replicas (groups for serving groups) per variant, cheapest first
	obs   autoscaler.Observed
}

// Observe implements autoscaler.Observer: every revision role whose
// Deployments (LeaderWorkerSets for serving groups) exist. It forgets the roles gone since the last pass and
// reserves what their Deployments asked for and have no pod yet.
func (p *pass) Observe(ctx context.Context, now time.Time) ([]autoscaler.Observed, error) {
	a := p.a
	demand := a.collector.demand()
	podStats := a.pods.stats()
	if usesResourceMetrics(p.revs) {
		a.usage.refresh(ctx, now)
	}
	for i := range p.revs {
		rev := &p.revs[i]
		if rev.DeletionTimestamp != nil {
			continue
		}
		for _, name := range names.Roles(rev) {
			r, err := p.observe(ctx, rev, name, now, demand, podStats)
			if err != nil {
				a.Log.Warn("autoscaler skips a revision role", slog.String("revision", rev.Namespace+"/"+rev.Name),
					slog.String("role", fleet.RoleLabel(name)), slog.Any("error", err))
				continue
			}
			if r != nil {
				p.roles[r.key] = r
			}
		}
	}
	for key := range a.roles {
		if _, ok := p.roles[key]; !ok {
			delete(a.roles, key)
			a.metrics.forget(key)
		}
	}
	reserve(p.free, p.roles, p.pods)
	out := make([]autoscaler.Observed, 0, len(p.roles))
	for _, r := range p.roles {
		out = append(out, r.obs)
	}
	return out, nil
}

// observe gathers one revision role's state; nil when its Deployments (or
// LeaderWorkerSets) do not exist yet. A grouped variant counts groups, its
// LeaderWorkerSet's replicas and readyReplicas, never pods.
func (p *pass) observe(ctx context.Context, rev *v1alpha1.ModelRevision, name string, now time.Time,
	demand map[fleet.Key]demand, podStats map[fleet.Key][]*stats.Stat) (*role, error) {
	key := keyOf(rev, name)
	r := &role{key: key, rev: rev, name: name}
	o := autoscaler.Observation{Variants: autoscaler.RoleVariantsOf(&rev.Spec.RevisionTemplate, key.Role)}
	current := 0
	for i, v := range resources.Variants(rev) {
		n, ready, ok, err := p.workload(ctx, rev, name, v)
		if !ok || err != nil {
			return nil, err
		}
		r.ready = append(r.ready, ready)
		o.Variants[i].Current = n
		current += n
		o.Ready += ready
	}
	st, err := p.a.state(rev, name, key, current, now)
	if err != nil {
		return nil, err
	}
	r.state = st
	d := demand[key]
	use := p.a.usage.of(key, now)
	o.InFlight, o.Buffered, o.Pods, o.CPU, o.MemoryGiB = d.InFlight, d.Buffered, podStats[key], use.CPU, use.MemoryGiB
	o.Override = override(rev, name)
	r.obs = autoscaler.Observed{Role: st.role, Observation: o}
	return r, nil
}

// workload reads the desired and ready replicas of a revision role on
// variant v from its Deployment, or its LeaderWorkerSet for serving groups
// (replicas are then groups); ok is false when the revision reconciler
// has not made it yet (or, for groups, the cluster has no LeaderWorkerSet
// API: the revision's status says so).
func (p *pass) workload(ctx context.Context, rev *v1alpha1.ModelRevision, name string, v *v1alpha1.AcceleratorVariant) (desired, ready int, ok bool, err error) {
	variant := ""
	if v != nil {
		variant = v.Name
	}
	if resources.Grouped(rev, name, v) {
		l := &lwsv1.LeaderWorkerSet{}
		err := p.a.Client.Get(ctx, client.ObjectKey{Namespace: rev.Namespace, Name: names.LeaderWorkerSet(rev, name, variant)}, l)
		switch {
		case apierrs.IsNotFound(err) || meta.IsNoMatchError(err):
			return 0, 0, false, nil
		case err != nil:
			return 0, 0, false, fmt.Errorf("getting leader worker set: %w", err)
		}
		if l.Spec.Replicas != nil {
			desired = int(*l.Spec.Replicas)
		}
		return desired, int(l.Status.ReadyReplicas), true, nil
	}
	d := &appsv1.Deployment{}
	err = p.a.Client.Get(ctx, client.ObjectKey{Namespace: rev.Namespace, Name: names.Deployment(rev, name, variant)}, d)
	switch {
	case apierrs.IsNotFound(err):
		return 0, 0, false, nil
	case err != nil:
		return 0, 0, false, fmt.Errorf("getting deployment: %w", err)
	}
	if d.Spec.Replicas != nil {
		desired = int(*d.Spec.Replicas)
	}
	return desired, int(d.Status.ReadyReplicas), true, nil
}

// state returns a revision role's state, made when the role (or its
// revision, by UID) is new to the autoscaler.
func (a *Autoscaler) state(rev *v1alpha1.ModelRevision, name string, key fleet.Key, current int, now time.Time) (*roleState, error) {
	if st := a.roles[key]; st != nil && st.uid == rev.UID {
		return st, nil
	}
	sc := rev.Spec.RoleScaling(name)
	dec, err := autoscaler.NewDecider(autoscaler.ConfigOf(sc, autoscaler.InitialScale(sc, 0)), now)
	if err != nil {
		return nil, fmt.Errorf("spec.scaling: %w", err)
	}
	// The reconciler created the Deployments at the initial scale (or
	// this is a restart): carry on from what runs.
	dec.Resume(current)
	st := &roleState{uid: rev.UID, role: &autoscaler.Role{Key: key, Decider: dec, Placed: current}}
	if name == fleet.RolePrefill {
		st.role.Ratio = autoscaler.RatioOf(rev.Spec.Roles)
	}
	a.roles[key] = st
	return st, nil
}

// override is the decision a revision's own spec makes for a role, if any.
func override(rev *v1alpha1.ModelRevision, name string) *autoscaler.Decision {
	if rev.Labels[v1alpha1.LabelRoutingState] == v1alpha1.RoutingStateReserve {
		// No traffic can reach it: it waits for a rollback at zero.
		return &autoscaler.Decision{Desired: 0, Reason: "no traffic routes to the revision"}
	}
	if rev.Annotations[v1alpha1.AnnotationAutoscalerClass] == v1alpha1.AutoscalerClassExternal &&
		rev.Spec.Replicas != nil && name != fleet.RolePrefill {
		// An external scaler (HorizontalPodAutoscaler, KEDA, kubectl
		// scale) writes the revision's scale subresource: its count,
		// placed like ours.
		return &autoscaler.Decision{Desired: int(*rev.Spec.Replicas), Reason: "spec.replicas, set through the revision's scale subresource"}
	}
	return nil
}

// reserve takes from free what the Deployments and LeaderWorkerSets
// already asked for and have no pod yet: their pods are on the way (the
// ReplicaSet or LWS controller makes them a moment later), and nothing
// else may claim that capacity. A serving group's pods count one by one
// (a leader under the role's label, workers under
// resources.LabelGroupWorker): a group whose leader runs and whose
// workers do not yet still reserves the workers' share.
func reserve(free map[string]int, roles map[fleet.Key]*role, pods []corev1.Pod) {
	have := map[string]int{} // namespace/revision/role/variant → pods
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		l := p.Labels
		role := l[v1alpha1.LabelRole]
		if role == "" {
			role = l[resources.LabelGroupWorker]
		}
		have[p.Namespace+"/"+l[v1alpha1.LabelRevision]+"/"+role+"/"+l[v1alpha1.LabelVariant]]++
	}
	for _, r := range roles {
		for _, v := range r.obs.Variants {
			pods := max(v.Pods, 1) // per replica; Need is the replica's, all its pods
			missing := v.Current*pods - have[r.rev.Namespace+"/"+r.rev.Name+"/"+fleet.RoleLabel(r.name)+"/"+v.Name]
			for res, n := range v.Need {
				if missing > 0 {
					free[res] = max(free[res]-missing*n/pods, 0)
				}
			}
		}
	}
}

// Decided implements autoscaler.Reporter: the decision and its signals as
// metrics.
func (p *pass) Decided(r *autoscaler.Role, sig autoscaler.Signals, dec autoscaler.Decision) {
	p.a.metrics.observe(r.Key, sig, dec)
}

// Placing implements autoscaler.Reporter.
func (p *pass) Placing(*autoscaler.Result) {}

// Placed implements autoscaler.Reporter: the placement as metrics, a
// change applied as a log line and a Scaled event, replicas left out as an
// InsufficientAccelerators event once per change.
func (p *pass) Placed(res *autoscaler.Result) {
	a, r := p.a, p.roles[res.Role.Key]
	for i, ready := range r.ready {
		a.metrics.placed(r.key, res.Variants[i].Name, res.Placement.Counts[i], ready)
	}
	a.metrics.unplaceable.With(labelsOf(r.key)).Set(float64(res.Placement.Unplaceable))
	dec, total := res.Decision, res.Placement.Total()
	if total != res.From && res.Err == nil {
		a.Log.Info("autoscaler", slog.String("revision", r.rev.Namespace+"/"+r.rev.Name), slog.String("role", fleet.RoleLabel(r.name)),
			slog.Int("from", res.From), slog.Int("to", total), slog.Bool("panic", dec.Panic), slog.String("reason", dec.Reason))
		a.event(r.rev, corev1.EventTypeNormal, "Scaled", "Scaled %s from %d to %d replicas: %s", fleet.RoleLabel(r.name), res.From, total, dec.Reason)
	}
	if res.NewMessage {
		a.event(r.rev, corev1.EventTypeWarning, v1alpha1.ReasonInsufficientAccelerators, "%s: %s", fleet.RoleLabel(r.name), res.Role.Message)
	}
}
