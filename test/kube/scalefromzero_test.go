package kube

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/activator/kube"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/autoscaling"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/modelservice"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
	"github.com/kvasir-serving/kvasir/queueproxy"
)

const wait, tick = 30 * time.Second, 20 * time.Millisecond

var discard = slog.New(slog.DiscardHandler)

func deploymentReplicas(c client.Client, name string) int32 {
	d := &appsv1.Deployment{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: name}, d); err != nil {
		return -1
	}
	return *d.Spec.Replicas
}

// startKvasir runs Kvasir's controller (reconcilers and the autoscaler)
// and an activator fed by informers, as `controller` and `activator
// --kubernetes` run them, on the cluster: each as its service account, with
// the RBAC of config/ and nothing more. mapAddress turns pod IPs into the
// loopback addresses their pods listen on. It returns the activator, its
// API's base URL and the registry of its metrics.
func startKvasir(t *testing.T, cl *kubetest.Cluster, mapAddress func(string) string) (*activator.Activator, string, *prometheus.Registry) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	config := filepath.Join(kubetest.RepoRoot(), "config")
	args := []string{"apply", "-f", filepath.Join(config, "100-namespace.yaml")}
	for _, f := range []string{"200-controller-rbac.yaml", "201-controller-roles.yaml", "200-activator-rbac.yaml", "201-activator-role.yaml"} {
		args = append(args, "-f", filepath.Join(config, f))
	}
	out, err := cl.Kubectl(ctx, args...)
	require.NoError(t, err, out)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(kubetest.Manager(t, cl.As("kvasir-serving/controller"), func(mgr ctrl.Manager) error {
		rec := mgr.GetEventRecorder("kvasir-controller")
		if err := (&modelservice.Reconciler{Client: mgr.GetClient(), Events: rec, BaseURL: "http://activator/v1",
			KeepRevisions: 2}).SetupWithManager(mgr); err != nil {
			return err
		}
		if err := (&revision.Reconciler{Client: mgr.GetClient(), Events: rec,
			Resources: resources.Config{QueueProxyImage: "qp", SimulatorImage: "sim"}}).SetupWithManager(mgr); err != nil {
			return err
		}
		return mgr.Add(&autoscaling.Autoscaler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Events: rec,
			Registerer: prometheus.NewRegistry(), Listener: ln, Tick: 100 * time.Millisecond, Log: discard,
			MapAddress: mapAddress, Endpoint: &autoscaling.LeaderEndpoint{Namespace: "kvasir-serving",
				Service: "autoscaler", IP: "192.0.2.250", Port: 8080, PortName: "http"}})
	}, func(o *ctrl.Options) { // as cmd/controller runs it
		o.LeaderElection, o.LeaderElectionID, o.LeaderElectionNamespace = true, "kvasir-controller", "kvasir-serving"
	}))

	demand := make(chan struct{}, 1)
	acfg := activator.DefaultConfig()
	acfg.BufferTimeout = wait // a failure ends the test in bounded time
	reg := prometheus.NewRegistry()
	act, err := activator.New(acfg, activator.WithRegisterer(reg),
		activator.WithLogger(discard), activator.WithOnDemand(func(fleet.Key) {
			select {
			case demand <- struct{}{}:
			default:
			}
		}))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	sync, err := kube.New(cl.As("kvasir-serving/activator"), act, kube.Options{Logger: discard, MapAddress: mapAddress})
	require.NoError(t, err)
	syncDone := make(chan error, 1)
	go func() { syncDone <- sync.Run(ctx) }()
	reportDone := make(chan struct{})
	go func() {
		defer close(reportDone)
		// A report a minute apart unless poked: a wake-up from zero must
		// come from the poke, not from the period.
		stats.Report(ctx, "ws://"+ln.Addr().String(), time.Minute, demand,
			func() stats.ActivatorReport { return act.Report("activator-0") }, discard)
	}()
	t.Cleanup(func() { cancel(); <-reportDone; require.NoError(t, <-syncDone) })
	api := httptest.NewServer(act.Handler())
	t.Cleanup(api.Close)
	return act, api.URL, reg
}

// A ModelService at zero on Kubernetes: a request waits in the activator,
// whose report wakes the autoscaler in the controller; the autoscaler
// scales the revision's Deployment to one through its scale subresource;
// the ReplicaSet makes the pod, the kubelet runs it, the EndpointSlice
// controller lists it once ready, and the request is answered. Idle past
// the grace period, the Deployment goes back to zero and the pod is gone.
func TestScaleFromZeroAndBack(t *testing.T) {
	cl := kubetest.StartCluster(t)
	kl := kubetest.RunKubelet(t, cl, kubetest.KubeletOptions{Images: images})
	c := kubetest.Client(t, cl.Config)
	ctx := t.Context()
	act, apiURL, _ := startKvasir(t, cl, kl.MapAddress)

	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "default"}}
	zero := int32(0)
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	ms.Spec.Template.Scaling = v1alpha1.ScalingSpec{MinScale: &zero, InitialScale: &zero,
		StableWindow: &metav1.Duration{Duration: 2 * time.Second}, ScaleToZeroGracePeriod: &metav1.Duration{Duration: time.Second}}
	require.NoError(t, c.Create(ctx, ms))
	require.Eventually(t, func() bool { return deploymentReplicas(c, "llama-00001-deployment") == 0 }, wait, tick,
		"the revision starts at zero")
	require.Eventually(t, func() bool { _, ok := act.PickRevision("llama", ""); return ok }, wait, tick,
		"the activator routes the model")
	require.Eventually(t, func() bool {
		return c.Get(ctx, client.ObjectKey{Namespace: "kvasir-serving", Name: "autoscaler-leader"}, &discoveryv1.EndpointSlice{}) == nil
	}, wait, tick, "the leader is the endpoint activators report to")

	type answer struct {
		code int
		body string
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		resp, err := http.Post(apiURL+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"llama","messages":[{"role":"user","content":"wake up"}],"max_tokens":8}`))
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answered <- answer{code: resp.StatusCode, body: string(b)}
	}()
	require.Eventually(t, func() bool { return deploymentReplicas(c, "llama-00001-deployment") == 1 }, wait, tick,
		"the buffered request's report scales the Deployment to one")

	a := <-answered
	require.NoError(t, a.err)
	require.Equal(t, http.StatusOK, a.code, a.body)
	require.Contains(t, a.body, `"chat.completion"`)

	// Idle past the stable window and the grace period: back to zero.
	require.Eventually(t, func() bool { return deploymentReplicas(c, "llama-00001-deployment") == 0 }, wait, tick)
	require.Eventually(t, func() bool { return kl.Running() == 0 }, wait, tick, "the pod is stopped")
	var evs eventsv1.EventList
	require.NoError(t, c.List(ctx, &evs, client.InNamespace("default")))
	var scaled []string
	for _, e := range evs.Items {
		if e.Regarding.Name == "llama-00001" && e.Reason == "Scaled" {
			scaled = append(scaled, e.Note)
		}
	}
	require.NotEmpty(t, scaled, "kubectl describe shows the autoscaler's decisions")
	for _, e := range evs.Items {
		if e.Regarding.Name == "llama-00001" {
			require.NotContains(t, []string{"ReadyFalse", "ReadyUnknown"}, e.Reason,
				"a revision stays ready while it wakes from zero: %s", e.Note)
		}
	}
}

// images are what the kubelet runs for the images the reconciler puts in
// pods (resources.Config above).
var images = map[string]kubetest.Image{"sim": sim.Main, "qp": queueproxy.Main}
