//go:build linux

package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

const (
	// The cluster's addresses and directories (hack/cluster/lib.sh).
	clusterDir  = "/var/lib/kvasir-cluster"
	runDir      = "/run/kvasir-cluster"
	nodeIP      = "10.244.0.1"
	bridge      = "kvasir0"
	guard       = "KVASIR-CLUSTER-GUARD"
	guardIn     = "KVASIR-CLUSTER-GUARD-IN"
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"

	// wait bounds each step on a real cluster: images pulled, pods started,
	// informers caught up, on a busy 2-core machine.
	wait = 4 * time.Minute
	tick = 500 * time.Millisecond

	// sleepy is a ModelService at zero until asked.
	sleepy = "test/cluster/testdata/sleepy.yaml"
	// grouped is a ModelService whose replica is a group of two pods.
	grouped = "test/cluster/testdata/grouped.yaml"
)

type cluster struct {
	root string   // the repository
	env  []string // the environment of hack/cluster-up.sh's env file
	c    client.Client
}

// kubectl runs the cluster's kubectl in the repository and returns its
// output; a failure fails the test.
func (k *cluster) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return k.mustRun(t, "kubectl", args...)
}

func (k *cluster) run(ctx context.Context, name string, args ...string) (string, error) {
	return k.runStdin(ctx, "", name, args...)
}

func (k *cluster) runStdin(ctx context.Context, stdin, name string, args ...string) (string, error) {
	if p := lookPath(k.env, name); p != "" {
		name = p
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = k.root
	cmd.Env = k.env
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// lookPath finds name on the PATH of env (its last PATH, as exec takes
// the last of duplicate variables).
func lookPath(env []string, name string) string {
	var path string
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = p
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.Mode()&0o111 != 0 {
			return filepath.Join(dir, name)
		}
	}
	return ""
}

// up brings the cluster up (hack/cluster-up.sh) and tears it down when the
// test ends (hack/cluster-down.sh), unless it was up before the test or
// KVASIR_CLUSTER_KEEP is set. On failure it logs what the cluster shows.
func up(t *testing.T) *cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the real cluster needs root (containers, network namespaces, iptables); run make test as root, or see docs/kubernetes.md")
	}
	root := kubetest.RepoRoot()
	_, statErr := os.Stat(filepath.Join(clusterDir, "up"))
	wasUp := statErr == nil
	start := time.Now()
	cmd := exec.Command(filepath.Join(root, "hack", "cluster-up.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("hack/cluster-up.sh (%s):\n%s", time.Since(start).Round(time.Second), stderr.String())
	if !wasUp && os.Getenv("KVASIR_CLUSTER_KEEP") == "" {
		t.Cleanup(func() { down(t) })
	}
	require.NoError(t, err, "hack/cluster-up.sh")
	kubeconfig := strings.TrimSpace(string(out))
	require.Equal(t, filepath.Join(clusterDir, "kubeconfig"), kubeconfig)

	// A second bring-up finds the cluster up and changes nothing.
	apiserver, err := os.ReadFile(filepath.Join(runDir, "pids", "kube-apiserver.pid"))
	require.NoError(t, err)
	again, err := exec.Command(filepath.Join(root, "hack", "cluster-up.sh")).Output()
	require.NoError(t, err, "hack/cluster-up.sh again")
	require.Equal(t, string(out), string(again))
	same, err := os.ReadFile(filepath.Join(runDir, "pids", "kube-apiserver.pid"))
	require.NoError(t, err)
	require.Equal(t, string(apiserver), string(same), "the second bring-up restarted the API server")

	k := &cluster{root: root, env: append(os.Environ(), readEnv(t, filepath.Join(clusterDir, "env"))...)}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	scheme := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(scheme))
	require.NoError(t, v1alpha1.AddToScheme(scheme))
	require.NoError(t, lwsv1.AddToScheme(scheme))
	k.c, err = client.New(cfg, client.Options{Scheme: scheme})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			k.diagnose(t)
		}
	})
	return k
}

// down tears the cluster down and checks that nothing is left.
func down(t *testing.T) {
	start := time.Now()
	out, err := exec.Command(filepath.Join(kubetest.RepoRoot(), "hack", "cluster-down.sh")).CombinedOutput()
	t.Logf("hack/cluster-down.sh (%s):\n%s", time.Since(start).Round(time.Second), out)
	if err != nil {
		t.Errorf("hack/cluster-down.sh: %v", err)
	}
	if out, err := exec.Command(filepath.Join(kubetest.RepoRoot(), "hack", "cluster-down.sh")).CombinedOutput(); err != nil {
		t.Errorf("hack/cluster-down.sh with nothing to tear down: %v\n%s", err, out)
	}
	for _, dir := range []string{clusterDir, runDir} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left behind", dir)
		}
	}
	if _, err := net.InterfaceByName(bridge); err == nil {
		t.Errorf("the bridge %s is left behind", bridge)
	}
	for _, table := range []string{"filter", "nat", "mangle"} {
		rules, _ := exec.Command("iptables", "-t", table, "-S").CombinedOutput()
		for _, chain := range []string{guard, "KUBE-", "CNI-"} {
			if strings.Contains(string(rules), chain) {
				t.Errorf("iptables chains %s* are left behind in %s", chain, table)
			}
		}
	}
	if out, _ := exec.Command("pgrep", "-af", clusterDir+"|"+runDir).Output(); len(out) > 0 {
		t.Errorf("processes are left behind:\n%s", out)
	}
}

func (k *cluster) diagnose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"get", "nodes,pods,services,endpointslices", "-A", "-o", "wide"},
		{"get", "msvc,mrev,deployments", "-A"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"-n", "kvasir-serving", "logs", "deployment/controller", "--tail=60", "--all-containers"},
		{"-n", "kvasir-serving", "logs", "deployment/activator", "--tail=60"},
	} {
		out, _ := k.run(ctx, "kubectl", args...)
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	for _, d := range []string{"containerd", "kubelet"} {
		out, _ := exec.Command("tail", "-n", "40", filepath.Join(clusterDir, "logs", d+".log")).CombinedOutput()
		t.Logf("%s.log:\n%s", d, out)
	}
}

func readEnv(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	var env []string
	for _, line := range strings.Split(string(data), "\n") {
		kv, ok := strings.CutPrefix(line, "export ")
		if !ok {
			continue
		}
		env = append(env, os.Expand(kv, os.Getenv))
	}
	return env
}

// TestKoApplyOnARealCluster installs Kvasir as the README says, with
// `ko apply -f config/`, on a real single-node cluster and uses it as a
// client would.
func TestKoApplyOnARealCluster(t *testing.T) {
	k := up(t)
	ctx := t.Context()

	// The guard is in place before any pod runs, and it holds: a packet
	// from the pod network, or to a Service address nothing answers, that
	// would leave through the machine's interface is dropped (locally sent
	// packets dropped by netfilter fail with EPERM).
	for chain, want := range map[string]string{"POSTROUTING": guard, "PREROUTING": guardIn} {
		out, err := exec.Command("iptables", "-t", "mangle", "-S", chain, "1").CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Equal(t, fmt.Sprintf("-A %s -j %s", chain, want), strings.TrimSpace(string(out)), "the guard comes first in mangle %s", chain)
	}
	out, err := exec.Command("iptables", "-t", "mangle", "-S", guard).CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, rule := range []string{"-s " + clusterCIDR + " -j DROP", "-d " + serviceCIDR + " -j DROP"} {
		require.Contains(t, string(out), rule)
	}
	requireDropped(t, &net.UDPAddr{IP: net.ParseIP(nodeIP)}, &net.UDPAddr{IP: net.ParseIP("198.51.100.1"), Port: 9})
	requireDropped(t, nil, &net.UDPAddr{IP: net.ParseIP("10.96.255.254"), Port: 9})

	// The cluster's own surfaces: the API server and the kubelet refuse
	// anyone without a client certificate of the cluster's CA, and none of
	// its ports listens on an address other machines could reach.
	insecure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // an anonymous stranger
	for _, url := range []string{"https://" + nodeIP + ":6443/api/v1/secrets", "https://" + nodeIP + ":10250/pods"} {
		resp, err := insecure.Get(url)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "anonymous %s", url)
	}
	for _, addr := range outsideAddrs(t) {
		for _, port := range []string{"6443", "10250", "5000", "32379", "10257", "10259", "10249", "10256"} {
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr, port), time.Second)
			if err == nil {
				conn.Close()
			}
			require.Error(t, err, "%s:%s is reachable from outside", addr, port)
		}
	}

	// Pod Security "baseline" is enforced everywhere: a pod on the host's
	// network, which the guard would not see, is refused.
	hostNet := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hostnet","namespace":"default"},` +
		`"spec":{"hostNetwork":true,"containers":[{"name":"c","image":"127.0.0.1:5000/none:1"}]}}`
	refused, err := k.runStdin(t.Context(), hostNet, "kubectl", "apply", "-f", "-")
	require.Error(t, err)
	require.Contains(t, refused, `violates PodSecurity "baseline:latest": host namespaces`)
	// The runtime pulls from no registry but the cluster's own: any other
	// name resolves to a closed port on loopback.
	k.kubectl(t, "run", "outside", "--image=docker.io/library/busybox:1.36", "--restart=Never")
	require.Eventually(t, func() bool {
		pod := &corev1.Pod{}
		if k.c.Get(t.Context(), client.ObjectKey{Namespace: "default", Name: "outside"}, pod) != nil ||
			len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].State.Waiting == nil {
			return false
		}
		w := pod.Status.ContainerStatuses[0].State.Waiting
		return (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") && strings.Contains(w.Message, "127.0.0.1:9")
	}, wait, tick, "a pull from an outside registry goes to 127.0.0.1:9")
	k.kubectl(t, "delete", "pod", "outside", "--grace-period=0", "--force")

	// Install.
	start := time.Now()
	t.Logf("ko apply -f config/:\n%s", k.mustRun(t, "ko", "apply", "-f", "config/"))
	t.Logf("ko apply took %s", time.Since(start).Round(time.Second))
	for _, d := range []string{"controller", "activator"} {
		k.kubectl(t, "-n", "kvasir-serving", "rollout", "status", "deployment/"+d, "--timeout="+wait.String())
	}
	t.Logf("Kvasir available %s after ko apply started", time.Since(start).Round(time.Second))
	var policies networkingv1.NetworkPolicyList
	require.NoError(t, k.c.List(ctx, &policies, client.InNamespace("kvasir-serving")))
	require.NotEmpty(t, policies.Items, "config/'s NetworkPolicies are applied (the bridge plugin does not enforce them)")

	svc := &corev1.Service{}
	require.NoError(t, k.c.Get(ctx, client.ObjectKey{Namespace: "kvasir-serving", Name: "activator"}, svc))
	require.NotEmpty(t, svc.Spec.ClusterIP)
	base := fmt.Sprintf("http://%s:%d/v1/", svc.Spec.ClusterIP, svc.Spec.Ports[0].Port)
	sdk := openai.NewClient(option.WithBaseURL(base), option.WithAPIKey("unused"), option.WithMaxRetries(0),
		option.WithRequestTimeout(wait))
	servedBy := func(model string) (string, error) {
		var resp *http.Response
		out, err := sdk.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model, MaxTokens: openai.Int(8),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}}, option.WithResponseInto(&resp))
		if err != nil {
			return "", err
		}
		if len(out.Choices) == 0 || out.Choices[0].Message.Content == "" {
			return "", fmt.Errorf("an empty answer: %+v", out)
		}
		return resp.Header.Get("X-Kvasir-Revision"), nil
	}

	// examples/simulator.yaml, as its comment says: a chat completion and
	// a stream through the activator's Service.
	k.kubectl(t, "apply", "-f", "examples/simulator.yaml")
	k.waitReady(t, "demo", "demo-00001")
	rev, err := servedBy("demo")
	require.NoError(t, err)
	require.Equal(t, "demo-00001", rev)
	stream := sdk.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "demo", MaxTokens: openai.Int(12),
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Stream something")}})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	require.NoError(t, stream.Err())
	require.Greater(t, chunks, 2, "the answer arrives in pieces")
	require.NotEmpty(t, acc.Choices[0].Message.Content)

	// The runtime enforces the pods' security contexts: every container of
	// Kvasir's and of the revision runs as a user other than root on a
	// read-only root file system.
	k.requireConfined(t, "kvasir-serving", "app.kubernetes.io/name=kvasir", "controller", "activator")
	k.requireConfined(t, "default", v1alpha1.LabelService+"=demo", "queue-proxy", "engine-sim")

	// Scale from zero: a ModelService at zero; the first request waits in
	// the activator until a pod is up, and is answered.
	k.kubectl(t, "apply", "-f", sleepy)
	k.waitReady(t, "sleepy", "sleepy-00001")
	require.Eventually(t, func() bool { return k.replicas("sleepy-00001-deployment") == 0 && k.pods(t, "sleepy") == 0 },
		wait, tick, "sleepy is at zero, no pod")
	start = time.Now()
	rev, err = servedBy("sleepy")
	require.NoError(t, err, "the request held while sleepy scaled from zero")
	require.Equal(t, "sleepy-00001", rev)
	t.Logf("first request from zero answered in %s", time.Since(start).Round(10*time.Millisecond))
	require.Equal(t, int32(1), k.replicas("sleepy-00001-deployment"))

	// A canary with a tag (examples/canary.yaml over demo): demo-00002
	// takes 10% and answers to demo@canary.
	k.kubectl(t, "apply", "-f", "examples/canary.yaml")
	k.waitReady(t, "demo", "demo-00002")
	require.Eventually(t, func() bool { rev, err := servedBy("demo@canary"); return err == nil && rev == "demo-00002" },
		wait, tick, "the tag reaches the canary")
	require.Contains(t, k.kubectl(t, "get", "msvc", "demo"), "demo-00001=90%, demo-00002=10%@canary")
	for range 5 {
		rev, err := servedBy("demo")
		require.NoError(t, err)
		require.Contains(t, []string{"demo-00001", "demo-00002"}, rev)
	}

	k.checkTenants(t, base)
	k.checkGroups(t, servedBy)

	// kubectl delete removes everything each ModelService made.
	k.kubectl(t, "delete", "-f", "examples/canary.yaml", "-f", sleepy, "-f", grouped, "--wait=true", "--timeout="+wait.String())
	require.Eventually(t, func() bool {
		var revs v1alpha1.ModelRevisionList
		var deps appsv1.DeploymentList
		var sets lwsv1.LeaderWorkerSetList
		var pods corev1.PodList
		return k.c.List(ctx, &revs, client.InNamespace("default")) == nil && len(revs.Items) == 0 &&
			k.c.List(ctx, &deps, client.InNamespace("default")) == nil && len(deps.Items) == 0 &&
			k.c.List(ctx, &sets, client.InNamespace("default")) == nil && len(sets.Items) == 0 &&
			k.c.List(ctx, &pods, client.InNamespace("default")) == nil && len(pods.Items) == 0
	}, wait, tick, "revisions, Deployments, LeaderWorkerSets and pods are gone")
}

// checkGroups serves a model whose replica is a group of two pods, on the
// real LeaderWorkerSet controller the cluster runs (hack/cluster-up.sh):
// the revision is a LeaderWorkerSet, only the leader is an endpoint, both
// pods are confined like any revision pod, and a worker that crashes takes
// its group down and a whole new group serves.
func (k *cluster) checkGroups(t *testing.T, servedBy func(string) (string, error)) {
	ctx := t.Context()
	const set = "grouped-00001-group"
	k.kubectl(t, "apply", "-f", grouped)
	k.waitReady(t, "grouped", "grouped-00001")
	lws := &lwsv1.LeaderWorkerSet{}
	require.NoError(t, k.c.Get(ctx, client.ObjectKey{Namespace: "default", Name: set}, lws))
	require.Equal(t, int32(2), *lws.Spec.LeaderWorkerTemplate.Size, "pods per group")
	require.Equal(t, lwsv1.RecreateGroupOnPodRestart, lws.Spec.LeaderWorkerTemplate.RestartPolicy)
	require.Equal(t, int32(1), lws.Status.ReadyReplicas, "one ready group")
	require.Equal(t, int32(-1), k.replicas("grouped-00001-deployment"), "no Deployment beside the set")
	require.Eventually(t, func() bool {
		rev := &v1alpha1.ModelRevision{}
		if k.c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "grouped-00001"}, rev) != nil {
			return false
		}
		gang := rev.Status.GetCondition(v1alpha1.RevisionConditionGangScheduled)
		return rev.Status.PodsPerGroup == "2" && len(rev.Status.Groups) == 1 &&
			rev.Status.Groups[0].ReadyGroups == 1 && rev.Status.Groups[0].LeaderWorkerSet == set &&
			gang != nil && gang.Reason == v1alpha1.ReasonNoGangScheduler
	}, wait, tick, "the revision's status shows its group, and that no gang scheduler places it (the LWS group is the unit)")

	leader, worker := k.groupPods(t, set)
	require.NotEmpty(t, leader.Status.PodIP)
	require.Equal(t, []string{"engine"}, containerNames(worker), "a worker runs the engine alone")
	require.Contains(t, containerNames(leader), "queue-proxy")
	require.NotContains(t, worker.Labels, v1alpha1.LabelRole, "no Service selects a worker")
	var slices discoveryv1.EndpointSliceList
	require.NoError(t, k.c.List(ctx, &slices, client.InNamespace("default")))
	for _, s := range slices.Items {
		if s.Labels[discoveryv1.LabelServiceName] == set {
			continue // LWS's headless Service: the pods' DNS names, which workers dial the leader by
		}
		for _, e := range s.Endpoints {
			require.NotContains(t, e.Addresses, worker.Status.PodIP, "the worker is in EndpointSlice %s", s.Name)
		}
	}
	k.requireConfined(t, "default", lwsv1.SetNameLabelKey+"="+set, "queue-proxy", "engine-sim")

	rev, err := servedBy("grouped")
	require.NoError(t, err)
	require.Equal(t, "grouped-00001", rev)

	// The worker's engine crashes: LWS recreates the whole group (a new
	// leader too), and the new group serves.
	killed := 0
	for _, pid := range podProcesses(t, string(worker.UID)) {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "engine-sim" {
			require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
			killed++
		}
	}
	require.Equal(t, 1, killed, "the worker's engine process")
	start := time.Now()
	require.Eventually(t, func() bool {
		l := &corev1.Pod{}
		return k.c.Get(ctx, client.ObjectKey{Namespace: "default", Name: leader.Name}, l) != nil || l.UID != leader.UID
	}, wait, tick, "the leader is replaced with its group")
	require.Eventually(t, func() bool {
		rev, err := servedBy("grouped")
		return err == nil && rev == "grouped-00001"
	}, wait, tick, "a new group serves")
	t.Logf("group recreated and serving %s after its worker's engine was killed", time.Since(start).Round(10*time.Millisecond))
	newLeader, _ := k.groupPods(t, set)
	require.NotEqual(t, leader.UID, newLeader.UID)
}

// groupPods returns the running, ready leader and worker of a
// LeaderWorkerSet's group 0, waiting for both.
func (k *cluster) groupPods(t *testing.T, set string) (leader, worker corev1.Pod) {
	t.Helper()
	require.Eventually(t, func() bool {
		leader, worker = corev1.Pod{}, corev1.Pod{}
		var pods corev1.PodList
		if k.c.List(t.Context(), &pods, client.InNamespace("default"),
			client.MatchingLabels{lwsv1.SetNameLabelKey: set, lwsv1.GroupIndexLabelKey: "0"}) != nil || len(pods.Items) != 2 {
			return false
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || !podReady(&p) {
				return false
			}
			if p.Labels[lwsv1.WorkerIndexLabelKey] == "0" {
				leader = p
			} else {
				worker = p
			}
		}
		return leader.Name != "" && worker.Name != ""
	}, wait, tick, "the leader and the worker of %s are ready", set)
	return leader, worker
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func containerNames(p corev1.Pod) []string {
	var out []string
	for _, c := range p.Spec.Containers {
		out = append(out, c.Name)
	}
	return out
}

// outsideAddrs lists this machine's addresses on interfaces other than
// loopback and the cluster's bridge.
func outsideAddrs(t *testing.T) []string {
	t.Helper()
	ifaces, err := net.Interfaces()
	require.NoError(t, err)
	var out []string
	for _, i := range ifaces {
		if i.Flags&net.FlagLoopback != 0 || i.Name == bridge || i.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := i.Addrs()
		require.NoError(t, err)
		for _, a := range addrs {
			if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil {
				out = append(out, ip.IP.String())
			}
		}
	}
	return out
}

func (k *cluster) mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := k.run(t.Context(), name, args...)
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return out
}

// waitReady waits until the ModelService is Ready at the given revision.
func (k *cluster) waitReady(t *testing.T, name, latest string) {
	t.Helper()
	require.Eventually(t, func() bool {
		ms := &v1alpha1.ModelService{}
		return k.c.Get(t.Context(), client.ObjectKey{Namespace: "default", Name: name}, ms) == nil &&
			ms.Status.ObservedGeneration == ms.Generation && ms.Status.IsReady() &&
			ms.Status.LatestReadyRevisionName == latest
	}, wait, tick, "%s becomes ready at %s", name, latest)
}

func (k *cluster) replicas(deployment string) int32 {
	d := &appsv1.Deployment{}
	if err := k.c.Get(context.Background(), client.ObjectKey{Namespace: "default", Name: deployment}, d); err != nil || d.Spec.Replicas == nil {
		return -1
	}
	return *d.Spec.Replicas
}

func (k *cluster) pods(t *testing.T, service string) int {
	var pods corev1.PodList
	require.NoError(t, k.c.List(t.Context(), &pods, client.InNamespace("default"),
		client.MatchingLabels{v1alpha1.LabelService: service}))
	return len(pods.Items)
}

// requireDropped sends one UDP packet from laddr to raddr and requires the
// guard to refuse it.
func requireDropped(t *testing.T, laddr, raddr *net.UDPAddr) {
	t.Helper()
	conn, err := net.DialUDP("udp4", laddr, raddr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("kvasir guard probe"))
	require.ErrorIs(t, err, syscall.EPERM, "a packet from %v to %v must be dropped by the guard", laddr, raddr)
}

// requireConfined finds the host processes of the running pods matching
// selector (through their cgroups, named after the pod UID) and requires
// each named container process to run as a non-root user with its root
// file system mounted read-only.
func (k *cluster) requireConfined(t *testing.T, namespace, selector string, commands ...string) {
	t.Helper()
	var pods corev1.PodList
	sel, err := metav1.ParseToLabelSelector(selector)
	require.NoError(t, err)
	ls, err := metav1.LabelSelectorAsSelector(sel)
	require.NoError(t, err)
	require.NoError(t, k.c.List(t.Context(), &pods, client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: ls}))
	require.NotEmpty(t, pods.Items, "pods %s in %s", selector, namespace)
	seen := map[string]bool{}
	for _, pod := range pods.Items {
		if pod.Status.Phase != corev1.PodRunning {
			continue
		}
		for _, pid := range podProcesses(t, string(pod.UID)) {
			comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			if err != nil {
				continue // gone meanwhile
			}
			name := strings.TrimSpace(string(comm))
			if name == "pause" {
				continue
			}
			uid, ro := procConfinement(t, pid)
			require.NotEqual(t, "0", uid, "%s of pod %s runs as root", name, pod.Name)
			require.True(t, ro, "%s of pod %s has a writable root file system", name, pod.Name)
			seen[name] = true
		}
	}
	for _, c := range commands {
		require.True(t, seen[c], "no %s process found in pods %s (saw %v)", c, selector, seen)
	}
}

// podProcesses lists the host PIDs whose cgroup names the pod's UID.
func podProcesses(t *testing.T, uid string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if err == nil && bytes.Contains(cg, []byte("pod"+uid)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procConfinement returns the real user ID of a process and whether its
// root mount is read-only.
func procConfinement(t *testing.T, pid int) (uid string, readOnlyRoot bool) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid = f[1]
		}
	}
	mi, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	require.NoError(t, err)
	defer mi.Close()
	s := bufio.NewScanner(mi)
	for s.Scan() {
		// id parent major:minor root mountpoint options ...
		if f := strings.Fields(s.Text()); len(f) > 5 && f[4] == "/" {
			readOnlyRoot = strings.HasPrefix(f[5], "ro,") || f[5] == "ro"
		}
	}
	return uid, readOnlyRoot
}

// tenantKey is the API key of the cluster test's Tenant, held in a Secret.
const tenantKey = "cluster-test-key-6f1c0e"

// checkTenants applies a Tenant whose key is in a Secret and checks that
// the activator closes its API to anyone without that key, lets the key's
// holder call the models it is granted and no other, and opens again when
// the Tenant is gone.
func (k *cluster) checkTenants(t *testing.T, base string) {
	ctx := t.Context()
	sdk := func(key string) openai.Client {
		return openai.NewClient(option.WithBaseURL(base), option.WithAPIKey(key), option.WithMaxRetries(0),
			option.WithRequestTimeout(wait))
	}
	status := func(c openai.Client, model string) int {
		_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: model, MaxTokens: openai.Int(4),
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")}})
		if err == nil {
			return http.StatusOK
		}
		if apiErr, ok := errors.AsType[*openai.Error](err); ok {
			return apiErr.StatusCode
		}
		t.Logf("request failed: %v", err)
		return 0
	}
	tenant := `apiVersion: v1
kind: Secret
metadata: {name: team-a-keys, namespace: default}
stringData: {k1: "` + tenantKey + `"}
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: team-a, namespace: default}
spec:
  apiKeys:
    - secretKeyRef: {name: team-a-keys, key: k1}
  models: [demo]
`
	out, err := k.runStdin(ctx, tenant, "kubectl", "apply", "-f", "-")
	require.NoError(t, err, "%s", out)
	stranger, member := sdk("not-a-key"), sdk(tenantKey)
	require.Eventually(t, func() bool { return status(stranger, "demo") == http.StatusUnauthorized },
		wait, tick, "with a Tenant defined, an unknown key is refused")
	require.Equal(t, http.StatusOK, status(member, "demo"), "the Tenant's key from its Secret is accepted")
	require.Equal(t, http.StatusForbidden, status(member, "sleepy"), "a model the Tenant is not granted")
	resp, err := http.Post(base+"chat/completions", "application/json",
		strings.NewReader(`{"model":"demo","messages":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "no key at all")
	require.NotEmpty(t, resp.Header.Get("WWW-Authenticate"))

	out, err = k.runStdin(ctx, tenant, "kubectl", "delete", "-f", "-", "--wait=true")
	require.NoError(t, err, "%s", out)
	require.Eventually(t, func() bool { return status(stranger, "demo") == http.StatusOK },
		wait, tick, "with no Tenant left, the API is open again")
}
