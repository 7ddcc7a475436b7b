package autoscaling

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	metricsclient "k8s.io/metrics/pkg/client/clientset/versioned"
	"knative.dev/pkg/apis"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
)

const wait, tick = 30 * time.Second, 20 * time.Millisecond

type env struct {
	c     client.Client
	url   string // ws://host:port of the autoscaler's report listener
	token string // the report token (EnsureToken)
	reg   *prometheus.Registry
}

// start runs the revision reconciler and the autoscaler against a real API
// server; opts adjust the autoscaler. There is no scheduler or kubelet: the
// test plays them (nodes, bound pods, Deployment status).
func start(t *testing.T, opts ...func(*Autoscaler, *rest.Config)) env {
	t.Helper()
	cfg := kubetest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	admin := kubetest.Client(t, cfg)
	require.NoError(t, admin.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kvasir-serving"}}))
	token, err := EnsureToken(context.Background(), admin, "kvasir-serving")
	require.NoError(t, err)
	t.Cleanup(kubetest.Manager(t, cfg, func(mgr ctrl.Manager) error {
		rec := mgr.GetEventRecorder("kvasir-controller")
		if err := (&revision.Reconciler{Client: mgr.GetClient(), Events: rec,
			Resources: resources.Config{QueueProxyImage: "qp", SimulatorImage: "sim"}}).SetupWithManager(mgr); err != nil {
			return err
		}
		as := &Autoscaler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Events: rec, Registerer: reg,
			Listener: ln, Tick: 100 * time.Millisecond, Log: slog.New(slog.DiscardHandler), ReportToken: token}
		for _, o := range opts {
			o(as, cfg)
		}
		return mgr.Add(as)
	}, func(o *ctrl.Options) { o.Cache = reconciler.CacheOptions("") }))
	return env{c: admin, url: "ws://" + ln.Addr().String(), token: string(token), reg: reg}
}

func addNode(t *testing.T, c client.Client, name string, alloc corev1.ResourceList) {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	require.NoError(t, c.Create(ctx, n))
	n.Status.Allocatable, n.Status.Capacity = alloc, alloc
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	require.NoError(t, c.Status().Update(ctx, n))
}

func gpus(n string) corev1.ResourceList {
	return corev1.ResourceList{"nvidia.com/gpu": resource.MustParse(n)}
}

func newRevision(name string, mutate func(*v1alpha1.ModelRevision)) *v1alpha1.ModelRevision {
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
		Labels: map[string]string{v1alpha1.LabelService: strings.TrimSuffix(name, "-00001"), v1alpha1.LabelRevisionGeneration: "1"}}}
	rev.Spec.Model = "m"
	rev.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
	rev.Spec.TimeoutSeconds = 600
	rev.Spec.SetDefaults()
	zero, five, one := int32(0), int32(5), 1.0
	rev.Spec.Scaling.MinScale, rev.Spec.Scaling.MaxScale, rev.Spec.Scaling.InitialScale = &zero, &five, &zero
	rev.Spec.Scaling.Target = &v1alpha1.ScalingTarget{Concurrency: &one}
	rev.Spec.Replicas = &zero // as the ModelService reconciler creates it: the initial scale
	mutate(rev)
	return rev
}

// demand reports, as an activator would, requests buffered for revisions
// at zero, until the test ends.
func reportDemand(t *testing.T, e env, loads ...stats.RevisionLoad) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		token := func() (string, error) { return e.token, nil }
		stats.Report(ctx, e.url, token, 50*time.Millisecond, nil, func() stats.ActivatorReport {
			return stats.ActivatorReport{Activator: "activator-test", Time: time.Now(), Loads: loads}
		}, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func replicas(t *testing.T, c client.Client, name string) int32 {
	d := &appsv1.Deployment{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, d); err != nil {
		return -1
	}
	return *d.Spec.Replicas
}

func condition(t *testing.T, c client.Client, name string, typ apis.ConditionType) (status, reason, message string) {
	rev := &v1alpha1.ModelRevision{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, rev))
	if cond := rev.Status.GetCondition(typ); cond != nil {
		return string(cond.Status), cond.Reason, cond.Message
	}
	return "", "", ""
}

// gauge reads one series of a gauge from the registry (-1: absent).
func gauge(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	if v, ok := promtest.Value(reg, name, labels); ok {
		return v
	}
	return -1
}

func hasEvent(t *testing.T, c client.Client, object, reason string) bool {
	var evs eventsv1.EventList
	require.NoError(t, c.List(context.Background(), &evs, client.InNamespace("default")))
	for _, e := range evs.Items {
		if e.Regarding.Name == object && e.Reason == reason {
			return true
		}
	}
	return false
}

// Nodes' allocatable accelerators, minus what bound pods take, bound the
// replicas the autoscaler asks for; the revision says what is missing
// (condition, event, metric) until nodes with room join.
func TestCapacityFromNodesDrivesPlacementAndStatus(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	addNode(t, e.c, "gpu-1", gpus("1"))
	// Another workload holds the only GPU.
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "training", Namespace: "default"},
		Spec: corev1.PodSpec{NodeName: "gpu-1", Containers: []corev1.Container{{Name: "c", Image: "x",
			Resources: corev1.ResourceRequirements{Limits: gpus("1"), Requests: gpus("1")}}}}}
	require.NoError(t, e.c.Create(ctx, other))

	rev := newRevision("llama-00001", func(r *v1alpha1.ModelRevision) { r.Spec.Resources.Limits = gpus("1") })
	require.NoError(t, e.c.Create(ctx, rev))
	require.Eventually(t, func() bool { return replicas(t, e.c, "llama-00001-deployment") == 0 }, wait, tick,
		"created at its initial scale, zero")

	// Twenty requests wait at the activator: the decider wants maxScale (5)
	// and nothing can take one: the revision is not ready, and says why.
	reportDemand(t, e, stats.RevisionLoad{Namespace: "default", Service: "llama", Revision: "llama-00001", Buffered: 20})
	role := map[string]string{"namespace": "default", "service": "llama", "revision": "llama-00001", "role": "unified"}
	require.Eventually(t, func() bool { return gauge(t, e.reg, "kvasir_autoscaler_desired_replicas", role) == 5 }, wait, tick)
	require.Eventually(t, func() bool {
		s, reason, msg := condition(t, e.c, "llama-00001", apis.ConditionReady)
		return s == "False" && reason == v1alpha1.ReasonInsufficientAccelerators &&
			strings.Contains(msg, "unified: 5 replica(s) cannot be placed: not enough free nvidia.com/gpu")
	}, wait, tick)
	require.Equal(t, int32(0), replicas(t, e.c, "llama-00001-deployment"))
	require.Eventually(t, func() bool { return gauge(t, e.reg, "kvasir_revision_unplaceable_replicas", role) == 5.0 }, wait, tick)
	require.Eventually(t, func() bool { return hasEvent(t, e.c, "llama-00001", v1alpha1.ReasonInsufficientAccelerators) }, wait, tick)

	// A node with two GPUs joins: two replicas are placed, three are not.
	addNode(t, e.c, "gpu-2", gpus("2"))
	require.Eventually(t, func() bool { return replicas(t, e.c, "llama-00001-deployment") == 2 }, wait, tick)
	require.Eventually(t, func() bool {
		s, _, msg := condition(t, e.c, "llama-00001", v1alpha1.RevisionConditionCapacityAvailable)
		return s == "False" && strings.Contains(msg, "3 replica(s) cannot be placed: not enough free nvidia.com/gpu")
	}, wait, tick)
	require.Eventually(t, func() bool {
		s, _, _ := condition(t, e.c, "llama-00001", apis.ConditionReady)
		return s == "Unknown" // deploying: placed replicas are starting
	}, wait, tick)
	require.Eventually(t, func() bool { return hasEvent(t, e.c, "llama-00001", "Scaled") }, wait, tick)

	// A node with room joins: all five are placed and the condition clears.
	addNode(t, e.c, "gpu-3", gpus("8"))
	require.Eventually(t, func() bool { return replicas(t, e.c, "llama-00001-deployment") == 5 }, wait, tick)
	require.Eventually(t, func() bool {
		s, _, _ := condition(t, e.c, "llama-00001", v1alpha1.RevisionConditionCapacityAvailable)
		return s == "True"
	}, wait, tick)
	require.Eventually(t, func() bool { return gauge(t, e.reg, "kvasir_revision_unplaceable_replicas", role) == 0.0 }, wait, tick)
}

// With accelerator variants, the cheaper one's Deployment fills first and
// the rest spills to the dearer one, each bounded by its nodes' resource.
func TestVariantsSpillByCost(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	addNode(t, e.c, "npu-1", corev1.ResourceList{"huawei.com/ascend-910b": resource.MustParse("1")})
	addNode(t, e.c, "gpu-1", gpus("4"))
	rev := newRevision("qwen-00001", func(r *v1alpha1.ModelRevision) {
		r.Spec.Accelerators = []v1alpha1.AcceleratorVariant{
			{Name: "h100", Cost: 3, Resources: corev1.ResourceRequirements{Limits: gpus("1")}},
			{Name: "ascend", Cost: 2, Resources: corev1.ResourceRequirements{
				Limits: corev1.ResourceList{"huawei.com/ascend-910b": resource.MustParse("1")}}},
		}
	})
	require.NoError(t, e.c.Create(ctx, rev))
	reportDemand(t, e, stats.RevisionLoad{Namespace: "default", Service: "qwen", Revision: "qwen-00001", Buffered: 3})
	require.Eventually(t, func() bool {
		return replicas(t, e.c, "qwen-00001-ascend") == 1 && replicas(t, e.c, "qwen-00001-h100") == 2
	}, wait, tick, "one on the NPU, the rest on GPUs")
	v := map[string]string{"service": "qwen", "role": "unified", "variant": "h100"}
	// The gauge is set by the same pass that scaled, after it: not
	// necessarily before the scaled count can be read.
	require.Eventually(t, func() bool { return gauge(t, e.reg, "kvasir_revision_desired_replicas", v) == 2 }, wait, tick)
	s, _, _ := condition(t, e.c, "qwen-00001", v1alpha1.RevisionConditionCapacityAvailable)
	require.NotEqual(t, "False", s)

	// An external scaler (HPA, KEDA, kubectl scale) sets spec.replicas on a
	// revision of the external class: that count runs, placed by cost
	// within what is left (one NPU is taken, two GPUs are free).
	ext := newRevision("ext-00001", func(r *v1alpha1.ModelRevision) {
		r.Annotations = map[string]string{v1alpha1.AnnotationAutoscalerClass: v1alpha1.AutoscalerClassExternal}
		r.Spec.Accelerators = rev.Spec.Accelerators
	})
	require.NoError(t, e.c.Create(ctx, ext))
	require.Eventually(t, func() bool { return replicas(t, e.c, "ext-00001-h100") == 0 }, wait, tick)
	patch := client.MergeFrom(ext.DeepCopy())
	three := int32(3)
	ext.Spec.Replicas = &three
	require.NoError(t, e.c.Patch(ctx, ext, patch))
	require.Eventually(t, func() bool {
		return replicas(t, e.c, "ext-00001-h100") == 2 && replicas(t, e.c, "ext-00001-ascend") == 0
	}, wait, tick)
	require.Eventually(t, func() bool {
		s, _, msg := condition(t, e.c, "ext-00001", v1alpha1.RevisionConditionCapacityAvailable)
		return s == "False" && strings.Contains(msg, "1 replica(s) cannot be placed")
	}, wait, tick)
}

// metricsAPI stands in for metrics-server: envtest serves no aggregated
// API, so a CRD serves the resource metrics API's pods at its path
// (/apis/metrics.k8s.io/v1beta1/namespaces/NS/pods), with its shape.
const metricsAPI = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: pods.metrics.k8s.io
  annotations: {api-approved.kubernetes.io: "unapproved, a test stand-in for metrics-server"}
spec:
  group: metrics.k8s.io
  scope: Namespaced
  names: {plural: pods, singular: podmetrics, kind: PodMetrics, listKind: PodMetricsList}
  versions:
    - name: v1beta1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
`

// podMetrics is what metrics-server reports of a revision pod.
const podMetrics = `apiVersion: metrics.k8s.io/v1beta1
kind: PodMetrics
metadata:
  name: llama-00001-deployment-abc
  namespace: default
  labels: {serving.kvasir.dev/service: llama, serving.kvasir.dev/revision: llama-00001, serving.kvasir.dev/role: unified}
timestamp: "2026-12-01T00:00:00Z"
window: 30s
containers:
  - {name: engine, usage: {cpu: 6500m, memory: 20Gi}}
  - {name: queue-proxy, usage: {cpu: 500m, memory: 1Gi}}
`

func createYAML(t *testing.T, c client.Client, doc string) {
	t.Helper()
	u := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(doc), &u.Object))
	require.Eventually(t, func() bool { return c.Create(context.Background(), u.DeepCopy()) == nil }, wait, tick,
		"creating %s %s", u.GetKind(), u.GetName())
}

// The cpu target reads the pods' use from the resource metrics API: one pod
// using 7 cores at a target of 2 a replica wants 4 replicas; the observed
// metrics say what the pods use.
func TestCPUTargetFromResourceMetrics(t *testing.T) {
	var mc *metricsclient.Clientset
	e := start(t, func(a *Autoscaler, cfg *rest.Config) {
		mc = metricsclient.NewForConfigOrDie(cfg)
		a.ResourceMetrics, a.ResourceMetricsInterval = mc.MetricsV1beta1(), 100*time.Millisecond
	})
	ctx := context.Background()
	createYAML(t, e.c, metricsAPI)
	require.Eventually(t, func() bool {
		_, err := mc.MetricsV1beta1().PodMetricses("default").List(ctx, metav1.ListOptions{})
		return err == nil
	}, wait, tick, "the stand-in serves the metrics API")

	rev := newRevision("llama-00001", func(r *v1alpha1.ModelRevision) {
		one, two := int32(1), 2.0
		r.Spec.Scaling.MinScale, r.Spec.Scaling.InitialScale, r.Spec.Replicas = &one, &one, &one
		r.Spec.Scaling.Target = &v1alpha1.ScalingTarget{CPU: &two}
	})
	require.NoError(t, e.c.Create(ctx, rev))
	require.Eventually(t, func() bool { return replicas(t, e.c, "llama-00001-deployment") == 1 }, wait, tick)

	createYAML(t, e.c, podMetrics)
	role := map[string]string{"namespace": "default", "service": "llama", "revision": "llama-00001", "role": "unified"}
	require.Eventually(t, func() bool { return gauge(t, e.reg, "kvasir_autoscaler_observed_cpu_cores", role) == 7 }, wait, tick)
	require.Equal(t, 21.0*(1<<30), gauge(t, e.reg, "kvasir_autoscaler_observed_memory_bytes", role))
	require.Eventually(t, func() bool { return replicas(t, e.c, "llama-00001-deployment") == 4 }, wait, tick,
		"7 cores at 2 a replica")
}
