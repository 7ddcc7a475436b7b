package kube

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/activator/kube"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/reconciler"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/autoscaling"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/modelservice"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
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

// kvasir is Kvasir on a test cluster (kubetest.StartCluster, whose pods
// the kubelet runs with images): its controller (reconcilers and the
// autoscaler) and an activator fed by informers, as `controller` and
// `activator --kubernetes` run them, each as its service account with the
// RBAC of config/ and nothing more.
type kvasir struct {
	cl  *kubetest.Cluster
	kl  *kubetest.Kubelet
	c   client.Client        // the cluster's admin
	act *activator.Activator // and its API's base URL, metrics, official client:
	url string
	reg *prometheus.Registry
	sdk openai.Client
}

// startKvasir starts a cluster with Kvasir on it; all stops with the test.
func startKvasir(t *testing.T) *kvasir {
	t.Helper()
	cl := kubetest.StartCluster(t)
	kl := kubetest.RunKubelet(t, cl, kubetest.KubeletOptions{Images: images})
	mapAddress := kl.MapAddress
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	config := filepath.Join(kubetest.RepoRoot(), "config")
	args := []string{"apply", "-f", filepath.Join(config, "100-namespace.yaml")}
	for _, f := range []string{"200-controller-rbac.yaml", "201-controller-roles.yaml", "200-activator-rbac.yaml", "201-activator-role.yaml"} {
		args = append(args, "-f", filepath.Join(config, f))
	}
	out, err := cl.Kubectl(ctx, args...)
	require.NoError(t, err, out)
	// The controller makes the report token's Secret at startup, as its
	// service account; the activator reads it where its pod mounts it.
	token, err := autoscaling.EnsureToken(ctx, kubetest.Client(t, cl.As("kvasir-serving/controller")), "kvasir-serving")
	require.NoError(t, err)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, token, 0o600))
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
			Registerer: prometheus.NewRegistry(), Listener: ln, Tick: 100 * time.Millisecond, Log: discard, ReportToken: token,
			MapAddress: mapAddress, Endpoint: &autoscaling.LeaderEndpoint{Namespace: "kvasir-serving",
				Service: "autoscaler", IP: "192.0.2.250", Port: 8080, PortName: "http"}})
	}, func(o *ctrl.Options) { // as cmd/controller runs it
		o.LeaderElection, o.LeaderElectionID, o.LeaderElectionNamespace = true, "kvasir-controller", "kvasir-serving"
		o.Cache = reconciler.CacheOptions("")
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
		stats.Report(ctx, "ws://"+ln.Addr().String(), stats.TokenFile(tokenFile), time.Minute, demand,
			func() stats.ActivatorReport { return act.Report("activator-0") }, discard)
	}()
	t.Cleanup(func() { cancel(); <-reportDone; require.NoError(t, <-syncDone) })
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	api := httpserver.NewFast(act.FastHandler(), httpserver.DefaultLimits(), discard)
	go func() { _ = api.Serve(apiLn) }()
	t.Cleanup(func() { _ = api.Close() })
	apiURL := "http://" + apiLn.Addr().String()
	return &kvasir{cl: cl, kl: kl, c: kubetest.Client(t, cl.Config), act: act, url: apiURL, reg: reg,
		sdk: openai.NewClient(option.WithBaseURL(apiURL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))}
}

// kubectl runs kubectl against the cluster, logs the command and its
// output, and fails the test if it fails.
func (k *kvasir) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.cl.Kubectl(t.Context(), args...)
	require.NoError(t, err, out)
	t.Logf("$ kubectl %s\n%s", strings.Join(args, " "), out)
	return out
}

// images are what the kubelet runs for the images the reconciler puts in
// pods (resources.Config above).
var images = map[string]kubetest.Image{"sim": sim.Main, "qp": queueproxy.Main}

// checkRevisionPods checks what a revision's running pods expose: the
// queue-proxy answers at the pod's address, the engine (on the pod's
// loopback) does not; no service-account token is mounted; a
// NetworkPolicy of the revision selects them.
func (k *kvasir) checkRevisionPods(t *testing.T, revision string, enginePort int32) {
	t.Helper()
	ctx := t.Context()
	var pods corev1.PodList
	require.NoError(t, k.c.List(ctx, &pods, client.InNamespace("default"), client.MatchingLabels{v1alpha1.LabelRevision: revision}))
	require.NotEmpty(t, pods.Items)
	for _, p := range pods.Items {
		require.NotEmpty(t, p.Status.PodIP, p.Name)
		addr := k.kl.MapAddress(p.Status.PodIP)
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr, strconv.Itoa(names.QueueProxyPort)), time.Second)
		require.NoError(t, err, "the queue-proxy of %s", p.Name)
		conn.Close()
		_, err = net.DialTimeout("tcp", net.JoinHostPort(addr, strconv.Itoa(int(enginePort))), time.Second)
		require.Error(t, err, "the engine of %s is reachable at the pod's address", p.Name)
		for _, v := range p.Spec.Volumes {
			require.False(t, strings.HasPrefix(v.Name, "kube-api-access-"), "%s mounts a service-account token", p.Name)
		}
		var nps networkingv1.NetworkPolicyList
		require.NoError(t, k.c.List(ctx, &nps, client.InNamespace("default")))
		selected := false
		for _, np := range nps.Items {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			require.NoError(t, err)
			selected = selected || sel.Matches(labels.Set(p.Labels))
		}
		require.True(t, selected, "no NetworkPolicy selects %s", p.Name)
	}
}
