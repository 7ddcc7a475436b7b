package kubetest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// Cluster is an API server with the controllers of kube-controller-manager
// that Kvasir's objects depend on: Deployments make ReplicaSets, ReplicaSets
// make pods, ready pods enter EndpointSlices, and the garbage collector
// deletes what owner references tie to a deleted object. What runs pods is
// a Kubelet (see RunKubelet).
type Cluster struct {
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for the cluster's admin.
	Kubeconfig string

	dir string // the binaries
}

// clusterControllers are the kube-controller-manager controllers a
// Cluster runs.
var clusterControllers = "deployment-controller,replicaset-controller,endpointslice-controller,garbage-collector-controller"

// StartCluster starts a Cluster for the test, with config/'s CRDs and
// those of the files (or directories) in crds (LWSCRD's, say); it stops
// when the test ends.
func StartCluster(t testing.TB, crds ...string) *Cluster {
	t.Helper()
	env, cfg := start(t, crds...)
	dir, _ := Assets()
	tmp := t.TempDir()
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "kube-controller-manager"),
		"--kubeconfig="+kubeconfig,
		"--controllers="+clusterControllers,
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-gc-syncs=5",
		"--v=1",
	)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting kube-controller-manager: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Registered after start's clean-up, so it runs before the API server
	// stops.
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			t.Logf("kube-controller-manager's output:\n%s", out.String())
		}
	})
	return &Cluster{Config: cfg, Kubeconfig: kubeconfig, dir: dir}
}

// Kubectl runs kubectl against the cluster and returns what it printed
// (standard output and error together).
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.dir, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// lockedBuffer is a bytes.Buffer that two writers may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// As is the cluster's config acting as a service account
// ("namespace/name"), so that what runs with it has only the permissions
// RBAC grants that account.
func (c *Cluster) As(serviceAccount string) *rest.Config {
	ns, name, _ := strings.Cut(serviceAccount, "/")
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
	return cfg
}
