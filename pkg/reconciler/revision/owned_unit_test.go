package revision

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

func TestReplicasOf(t *testing.T) {
	dep := func(spec *int32, ready int32) *appsv1.Deployment {
		d := &appsv1.Deployment{}
		d.Spec.Replicas, d.Status.ReadyReplicas = spec, ready
		return d
	}
	set := func(spec *int32, ready int32) *lwsv1.LeaderWorkerSet {
		l := &lwsv1.LeaderWorkerSet{}
		l.Spec.Replicas, l.Status.ReadyReplicas = spec, ready
		return l
	}
	for _, tc := range []struct {
		name string
		obj  client.Object
		want replicas
	}{
		{"deployment", dep(ptr.To[int32](3), 2), replicas{desired: 3, ready: 2}},
		{"deployment without spec.replicas", dep(nil, 1), replicas{ready: 1}},
		{"deployment more ready than wanted (scaling down)", dep(ptr.To[int32](1), 4), replicas{desired: 1, ready: 4}},
		{"leader worker set: groups", set(ptr.To[int32](2), 1), replicas{desired: 2, ready: 1}},
		{"leader worker set without spec.replicas", set(nil, 0), replicas{}},
		{"another kind has none", &corev1.Service{}, replicas{}},
		{"a forged negative count is read as it is", dep(ptr.To[int32](-1), -5), replicas{desired: -1, ready: -5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, replicasOf(tc.obj))
		})
	}
}

func TestRoleReplicas(t *testing.T) {
	w := func(role string, desired, ready int32) workload {
		return workload{role: role, replicas: replicas{desired: desired, ready: ready}}
	}
	all := []workload{
		w(fleet.RoleDecode, 2, 1), w(fleet.RolePrefill, 5, 5), w(fleet.RoleDecode, 3, 0), w(fleet.RoleDecode, 0, 2),
	}
	for _, tc := range []struct {
		name string
		all  []workload
		role string
		want replicas
	}{
		{"every variant of the role", all, fleet.RoleDecode, replicas{desired: 5, ready: 3}},
		{"only its own role", all, fleet.RolePrefill, replicas{desired: 5, ready: 5}},
		{"a role with no workload", all, fleet.RoleUnified, replicas{}},
		{"no workloads", nil, fleet.RoleDecode, replicas{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, roleReplicas(tc.all, tc.role))
		})
	}
}

// Both readers of a role's objects go through replicasOf.
func TestWorkloadsReadReplicas(t *testing.T) {
	d := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](4)},
		Status: appsv1.DeploymentStatus{ReadyReplicas: 3, Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentProgressing, Reason: "ProgressDeadlineExceeded", Message: "stuck"}}}}
	wd := deploymentWorkload(fleet.RoleDecode, "h100", d)
	assert.Equal(t, replicas{desired: 4, ready: 3}, wd.replicas)
	assert.Equal(t, "stuck", wd.stalled)
	assert.Nil(t, wd.set)

	l := &lwsv1.LeaderWorkerSet{}
	l.Spec.Replicas, l.Status.ReadyReplicas = ptr.To[int32](2), 1
	wl := lwsWorkload(fleet.RoleUnified, "", l)
	assert.Equal(t, replicas{desired: 2, ready: 1}, wl.replicas)
	assert.Equal(t, int32(0), wl.size, "no size: none")
	l.Spec.LeaderWorkerTemplate.Size = ptr.To[int32](4)
	assert.Equal(t, int32(4), lwsWorkload(fleet.RoleUnified, "", l).size)
}

// ownedFixture is a fake cluster holding objects, whose calls of one
// verb fail with fail when it is not nil, and which counts updates.
type ownedFixture struct {
	r       *Reconciler
	rec     *events.FakeRecorder
	updates int
}

func newOwnedFixture(t *testing.T, failVerb string, fail error, objs ...client.Object) *ownedFixture {
	t.Helper()
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	require.NoError(t, lwsv1.AddToScheme(scheme))
	f := &ownedFixture{rec: events.NewFakeRecorder(10)}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
		WithInterceptorFuncs(interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if failVerb == "get" {
					return fail
				}
				return c.Get(ctx, key, obj, opts...)
			},
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				if failVerb == "create" {
					return fail
				}
				return c.Create(ctx, obj, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if failVerb == "update" {
					return fail
				}
				f.updates++
				return c.Update(ctx, obj, opts...)
			},
		}).Build()
	f.r = &Reconciler{Client: c, Events: f.rec}
	return f
}

// events drains the events recorded so far.
func (f *ownedFixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func ownedRev() *v1alpha1.ModelRevision {
	return &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-00001"}}
}

func ownedDeployment(replicas int32, image string) *appsv1.Deployment {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-00001-deployment"}}
	d.Spec.Replicas = ptr.To(replicas)
	d.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "demo"}}
	d.Spec.Template.Labels = map[string]string{"app": "demo"}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "engine", Image: image}}
	return d
}

func ownedSet(replicas int32, scheduler, exclusive string) *lwsv1.LeaderWorkerSet {
	l := &lwsv1.LeaderWorkerSet{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-00001-group"}}
	l.Spec.Replicas = ptr.To(replicas)
	l.Spec.LeaderWorkerTemplate.Size = ptr.To[int32](2)
	l.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulerName = scheduler
	l.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.Containers = []corev1.Container{{Name: "engine", Image: "e:1"}}
	if exclusive != "" {
		l.Annotations = map[string]string{lwsv1.ExclusiveKeyAnnotationKey: exclusive}
	}
	return l
}

var errRefused = errors.New("refused")

func TestReconcileOwnedDeployment(t *testing.T) {
	for _, tc := range []struct {
		name       string
		have       *appsv1.Deployment // in the cluster, or nil
		want       *appsv1.Deployment
		failVerb   string
		err        string
		events     []string
		updates    int
		replicas   int32  // of the object returned
		image      string // of the object returned
		storedRepl int32  // in the cluster afterwards
	}{{
		name: "missing: created as built, with an event", want: ownedDeployment(1, "e:1"),
		events: []string{"Normal Created Created deployment demo-00001-deployment"}, replicas: 1, image: "e:1", storedRepl: 1,
	}, {
		name: "as built but for the autoscaler's replicas: left alone", have: ownedDeployment(7, "e:1"),
		want: ownedDeployment(1, "e:1"), replicas: 7, image: "e:1", storedRepl: 7,
	}, {
		name: "changed: the builder's spec, the autoscaler's replicas kept", have: ownedDeployment(7, "e:1"),
		want: ownedDeployment(1, "e:2"), updates: 1, replicas: 7, image: "e:2", storedRepl: 7,
	}, {
		name: "get fails", have: ownedDeployment(7, "e:1"), want: ownedDeployment(1, "e:2"), failVerb: "get",
		err: "getting deployment demo-00001-deployment: refused",
	}, {
		name: "create fails: no event", want: ownedDeployment(1, "e:1"), failVerb: "create",
		err: "creating deployment demo-00001-deployment: refused",
	}, {
		name: "update fails", have: ownedDeployment(7, "e:1"), want: ownedDeployment(1, "e:2"), failVerb: "update",
		err: "updating deployment demo-00001-deployment: refused",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []client.Object
			if tc.have != nil {
				objs = append(objs, tc.have)
			}
			f := newOwnedFixture(t, tc.failVerb, errRefused, objs...)
			got, err := reconcileOwned(context.Background(), f.r, ownedRev(), tc.want, deploymentKind)
			if tc.err != "" {
				require.EqualError(t, err, tc.err)
				assert.ErrorIs(t, err, errRefused)
				assert.Empty(t, f.events())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.events, f.events())
			assert.Equal(t, tc.updates, f.updates)
			assert.Equal(t, tc.replicas, *got.Spec.Replicas)
			assert.Equal(t, tc.image, got.Spec.Template.Spec.Containers[0].Image)
			stored := &appsv1.Deployment{}
			require.NoError(t, f.r.Client.Get(context.Background(), client.ObjectKeyFromObject(tc.want), stored))
			assert.Equal(t, tc.storedRepl, *stored.Spec.Replicas)
			assert.Equal(t, tc.image, stored.Spec.Template.Spec.Containers[0].Image)
		})
	}
}

func TestReconcileOwnedLeaderWorkerSet(t *testing.T) {
	noMatch := &meta.NoKindMatchError{GroupKind: schema.GroupKind{Group: lwsv1.GroupVersion.Group, Kind: "LeaderWorkerSet"}}
	for _, tc := range []struct {
		name      string
		have      *lwsv1.LeaderWorkerSet
		want      *lwsv1.LeaderWorkerSet
		failVerb  string
		fail      error
		err       string // its start
		notThere  bool   // errLWSNotInstalled
		updates   int
		scheduler string
		exclusive string // "" none
	}{{
		name: "as built: left alone", have: ownedSet(3, "volcano", "zone"), want: ownedSet(1, "volcano", "zone"),
		scheduler: "volcano", exclusive: "zone",
	}, {
		name: "back to the default scheduler, which DeepDerivative would not see", have: ownedSet(3, "volcano", ""),
		want: ownedSet(1, "", ""), updates: 1, scheduler: "",
	}, {
		name: "the exclusive topology goes", have: ownedSet(3, "", "zone"), want: ownedSet(1, "", ""), updates: 1,
	}, {
		name: "the exclusive topology comes", have: ownedSet(3, "", ""), want: ownedSet(1, "", "rack"), updates: 1,
		exclusive: "rack",
	}, {
		name: "no such kind on get", want: ownedSet(1, "", ""), failVerb: "get", fail: noMatch,
		err: "getting leader worker set demo-00001-group: " + errLWSNotInstalled.Error() + " (", notThere: true,
	}, {
		name: "no such kind on create", want: ownedSet(1, "", ""), failVerb: "create", fail: noMatch,
		err: "creating leader worker set demo-00001-group: " + errLWSNotInstalled.Error() + " (", notThere: true,
	}, {
		name: "another create error is not 'not installed'", want: ownedSet(1, "", ""), failVerb: "create", fail: errRefused,
		err: "creating leader worker set demo-00001-group: refused",
	}, {
		name: "another get error is not 'not installed'", want: ownedSet(1, "", ""), failVerb: "get", fail: errRefused,
		err: "getting leader worker set demo-00001-group: refused",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var objs []client.Object
			if tc.have != nil {
				objs = append(objs, tc.have)
			}
			f := newOwnedFixture(t, tc.failVerb, tc.fail, objs...)
			got, err := reconcileOwned(context.Background(), f.r, ownedRev(), tc.want, lwsKind)
			if tc.err != "" {
				require.Error(t, err)
				assert.True(t, strings.HasPrefix(err.Error(), tc.err), err.Error())
				assert.Equal(t, tc.notThere, errors.Is(err, errLWSNotInstalled))
				assert.ErrorIs(t, err, tc.fail)
				return
			}
			require.NoError(t, err)
			assert.Empty(t, f.events())
			assert.Equal(t, tc.updates, f.updates)
			assert.Equal(t, int32(3), *got.Spec.Replicas, "the autoscaler's groups")
			assert.Equal(t, tc.scheduler, got.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulerName)
			k, ok := got.Annotations[lwsv1.ExclusiveKeyAnnotationKey]
			assert.Equal(t, tc.exclusive != "", ok)
			assert.Equal(t, tc.exclusive, k)
		})
	}
}

// A Service is never changed once made; a NetworkPolicy takes the
// builder's spec. Both are created with their event.
func TestReconcileOwnedServiceAndNetworkPolicy(t *testing.T) {
	svc := func(port int32) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-00001"}}
		s.Spec.Ports = []corev1.ServicePort{{Name: "http", Port: port}}
		return s
	}
	np := func(label string) *networkingv1.NetworkPolicy {
		p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "demo-00001"}}
		p.Spec.PodSelector.MatchLabels = map[string]string{"app": label}
		return p
	}
	ctx := context.Background()

	f := newOwnedFixture(t, "", nil)
	_, err := reconcileOwned(ctx, f.r, ownedRev(), svc(80), serviceKind)
	require.NoError(t, err)
	_, err = reconcileOwned(ctx, f.r, ownedRev(), np("a"), networkPolicyKind)
	require.NoError(t, err)
	assert.Equal(t, []string{"Normal Created Created service demo-00001", "Normal Created Created network policy demo-00001"}, f.events())

	got, err := reconcileOwned(ctx, f.r, ownedRev(), svc(9999), serviceKind)
	require.NoError(t, err)
	assert.Equal(t, int32(80), got.Spec.Ports[0].Port, "a service is never changed")
	gotNP, err := reconcileOwned(ctx, f.r, ownedRev(), np("b"), networkPolicyKind)
	require.NoError(t, err)
	assert.Equal(t, "b", gotNP.Spec.PodSelector.MatchLabels["app"])
	assert.Equal(t, 1, f.updates, "the network policy only")
	assert.Empty(t, f.events(), "no event for an update")

	f = newOwnedFixture(t, "get", errRefused)
	_, err = reconcileOwned(ctx, f.r, ownedRev(), svc(80), serviceKind)
	require.EqualError(t, err, "getting service demo-00001: refused")
	_, err = reconcileOwned(ctx, f.r, ownedRev(), np("a"), networkPolicyKind)
	require.EqualError(t, err, "getting network policy demo-00001: refused")
	f = newOwnedFixture(t, "update", errRefused, np("a"))
	_, err = reconcileOwned(ctx, f.r, ownedRev(), np("b"), networkPolicyKind)
	require.EqualError(t, err, "updating network policy demo-00001: refused")
}
