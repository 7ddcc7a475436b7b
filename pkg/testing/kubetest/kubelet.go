package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrs "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Image is what a container of an image runs: its entrypoint, given the
// container's arguments, until ctx ends (the container's SIGTERM).
type Image func(ctx context.Context, args []string, stderr io.Writer) error

// KubeletOptions configures a Kubelet.
type KubeletOptions struct {
	// Node is the name of the one node it runs (default "hollow-node").
	Node string
	// Allocatable adds extended resources (accelerators) to the node.
	Allocatable corev1.ResourceList
	// Images maps a container image to what it runs; a container of any
	// other image waits with reason ErrImagePull.
	Images map[string]Image
}

// Kubelet plays the kubelet of one node, in-process: it binds every pending
// pod to its node (it is the scheduler too), runs each pod's containers as
// the Images given, probes their readiness, reports pod status, and on
// deletion runs the preStop hooks, stops the containers and removes the pod.
//
// A pod's network namespace is two loopback addresses of its own: its
// address, 127.0.1.N, which its status says is 192.0.2.N (TEST-NET-1: the
// API server rejects loopback addresses in EndpointSlices; MapAddress
// turns the one into the other), and its loopback, 127.0.2.N. In a
// container's arguments and environment 0.0.0.0 stands for the pod's
// address, and 127.0.0.1 and localhost for its loopback: what a container
// binds to 127.0.0.1 is reached by the pod's other containers at
// 127.0.0.1, and not at the pod's address, as in a real pod. Unlike a real
// pod, what binds 0.0.0.0 is not on the pod's loopback. Probes and hooks
// go to the pod's address. A container that exits is not restarted.
type Kubelet struct {
	c    client.Client
	opts KubeletOptions
	out  lockedBuffer // the containers' output, shown when the test fails

	mu   sync.Mutex
	pods map[types.UID]*hollowPod
	used map[int]bool // host numbers of running pods
}

// hollowPod is a pod the Kubelet runs.
type hollowPod struct {
	uid        types.UID
	n          int // host number: 127.0.1.n, 192.0.2.n
	started    metav1.Time
	containers []*hollowContainer
	stopping   bool
	reported   string // the last status sent, in short
	readySince metav1.Time
}

type hollowContainer struct {
	spec   corev1.Container
	cancel context.CancelFunc
	done   chan struct{} // closed when it exits
	err    error         // once done
	pull   bool          // waiting: no such image
	ready  bool
}

// RunKubelet registers a node and runs its Kubelet until the test ends.
func RunKubelet(t testing.TB, cluster *Cluster, opts KubeletOptions) *Kubelet {
	t.Helper()
	if opts.Node == "" {
		opts.Node = "hollow-node"
	}
	k := &Kubelet{c: Client(t, cluster.Config), opts: opts, pods: map[types.UID]*hollowPod{}, used: map[int]bool{}}
	ctx, cancel := context.WithCancel(context.Background())
	if err := k.registerNode(ctx); err != nil {
		cancel()
		t.Fatalf("registering the node: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if err := k.sync(ctx); err != nil && ctx.Err() == nil {
				k.logf("kubelet: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		k.mu.Lock()
		pods := make([]*hollowPod, 0, len(k.pods))
		for _, p := range k.pods {
			pods = append(pods, p)
		}
		k.mu.Unlock()
		for _, p := range pods {
			k.stopContainers(p, 0)
		}
		if t.Failed() {
			t.Logf("kubelet and containers:\n%s", k.out.String())
		}
	})
	return k
}

// MapAddress turns a pod IP the Kubelet gave into the loopback address its
// containers listen on; other addresses are returned as they are.
func (k *Kubelet) MapAddress(ip string) string {
	if n, ok := strings.CutPrefix(ip, "192.0.2."); ok {
		return "127.0.1." + n
	}
	return ip
}

// Running is the number of pods whose containers run.
func (k *Kubelet) Running() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.pods)
}

func (k *Kubelet) logf(format string, args ...any) {
	fmt.Fprintf(&k.out, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
}

func (k *Kubelet) registerNode(ctx context.Context) error {
	alloc := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("512Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	for name, q := range k.opts.Allocatable {
		alloc[name] = q
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.opts.Node}}
	if err := k.c.Create(ctx, node); err != nil {
		return err
	}
	node.Status = corev1.NodeStatus{Capacity: alloc, Allocatable: alloc,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}}
	return k.c.Status().Update(ctx, node)
}

// sync is one pass over every pod.
func (k *Kubelet) sync(ctx context.Context) error {
	var pods corev1.PodList
	if err := k.c.List(ctx, &pods); err != nil {
		return err
	}
	seen := map[types.UID]bool{}
	var errs []error
	for i := range pods.Items {
		pod := &pods.Items[i]
		seen[pod.UID] = true
		switch {
		case pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil:
			b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
				Target: corev1.ObjectReference{Kind: "Node", Name: k.opts.Node}}
			if err := k.c.SubResource("binding").Create(ctx, pod, b); err != nil && !apierrs.IsConflict(err) {
				errs = append(errs, fmt.Errorf("binding pod %s/%s: %w", pod.Namespace, pod.Name, err))
			}
		case pod.Spec.NodeName != k.opts.Node:
		case pod.DeletionTimestamp != nil:
			k.terminate(ctx, pod)
		default:
			if err := k.run(ctx, pod); err != nil {
				errs = append(errs, err)
			}
		}
	}
	k.mu.Lock()
	var gone []*hollowPod
	for uid, p := range k.pods {
		if !seen[uid] && !p.stopping {
			p.stopping = true
			gone = append(gone, p)
		}
	}
	k.mu.Unlock()
	for _, p := range gone { // deleted without a grace period
		go k.stopContainers(p, 0)
	}
	return errors.Join(errs...)
}

// run starts a pod's containers if it is new, probes them and reports its
// status when it changed.
func (k *Kubelet) run(ctx context.Context, pod *corev1.Pod) error {
	k.mu.Lock()
	p := k.pods[pod.UID]
	if p == nil {
		n := 1
		for k.used[n] {
			n++
		}
		if n > 254 {
			k.mu.Unlock()
			return fmt.Errorf("pod %s/%s: no loopback address left", pod.Namespace, pod.Name)
		}
		k.used[n] = true
		p = &hollowPod{uid: pod.UID, n: n, started: metav1.Now()}
		k.pods[pod.UID] = p
		k.mu.Unlock()
		k.start(pod, p)
	} else {
		stopping := p.stopping
		k.mu.Unlock()
		if stopping {
			return nil
		}
	}
	for _, c := range p.containers {
		c.ready = k.probe(p, c)
	}
	status, short := k.status(pod, p)
	if short == p.reported {
		return nil
	}
	pod = pod.DeepCopy()
	pod.Status = status
	if err := k.c.Status().Update(ctx, pod); err != nil {
		if apierrs.IsConflict(err) || apierrs.IsNotFound(err) {
			return nil // the next pass sees the new version
		}
		return fmt.Errorf("pod %s/%s status: %w", pod.Namespace, pod.Name, err)
	}
	p.reported = short
	return nil
}

func (p *hollowPod) ip() string       { return "127.0.1." + strconv.Itoa(p.n) }
func (p *hollowPod) podIP() string    { return "192.0.2." + strconv.Itoa(p.n) }
func (p *hollowPod) loopback() string { return "127.0.2." + strconv.Itoa(p.n) }

// start runs a pod's containers.
func (k *Kubelet) start(pod *corev1.Pod, p *hollowPod) {
	for _, spec := range pod.Spec.Containers {
		c := &hollowContainer{spec: spec, done: make(chan struct{})}
		p.containers = append(p.containers, c)
		image := k.opts.Images[spec.Image]
		if image == nil {
			c.pull = true
			close(c.done)
			continue
		}
		args := containerArgs(pod, p, spec)
		ctx, cancel := context.WithCancel(context.Background())
		c.cancel = cancel
		k.logf("%s/%s %s: starting %s %q on %s", pod.Namespace, pod.Name, spec.Name, spec.Image, args, p.ip())
		go func() {
			defer close(c.done)
			c.err = image(ctx, args, &k.out)
			k.logf("%s/%s %s: exited: %v", pod.Namespace, pod.Name, spec.Name, c.err)
		}()
	}
}

// containerArgs are a container's arguments with $(VAR) references to its
// environment expanded and the pod's own addresses in place of the
// wildcard and loopback ones, in the arguments and the variables alike.
func containerArgs(pod *corev1.Pod, p *hollowPod, spec corev1.Container) []string {
	addrs := []string{"0.0.0.0", p.ip(), "127.0.0.1", p.loopback(), "localhost", p.loopback()}
	own := strings.NewReplacer(addrs...)
	var pairs []string
	for _, e := range spec.Env {
		v := e.Value
		if f := e.ValueFrom; f != nil && f.FieldRef != nil {
			switch f.FieldRef.FieldPath {
			case "metadata.name":
				v = pod.Name
			case "metadata.namespace":
				v = pod.Namespace
			case "status.podIP":
				v = p.podIP()
			}
		}
		pairs = append(pairs, "$("+e.Name+")", own.Replace(v))
	}
	pairs = append(pairs, addrs...)
	r := strings.NewReplacer(pairs...)
	args := make([]string, len(spec.Args))
	for i, a := range spec.Args {
		args[i] = r.Replace(a)
	}
	return args
}

var probeClient = &http.Client{Timeout: time.Second}

// probe runs a container's HTTP readiness probe once (a container without
// one is ready while it runs).
func (k *Kubelet) probe(p *hollowPod, c *hollowContainer) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	pr := c.spec.ReadinessProbe
	if pr == nil || pr.HTTPGet == nil {
		return true
	}
	resp, err := probeClient.Get("http://" + net.JoinHostPort(p.ip(), portOf(c.spec, pr.HTTPGet.Port.String())) + pr.HTTPGet.Path)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

// portOf resolves a probe's or hook's port, a number or a container port's
// name.
func portOf(spec corev1.Container, port string) string {
	for _, cp := range spec.Ports {
		if cp.Name == port {
			return strconv.Itoa(int(cp.ContainerPort))
		}
	}
	return port
}

// status is what the Kubelet reports of a pod, and its short form.
func (k *Kubelet) status(pod *corev1.Pod, p *hollowPod) (corev1.PodStatus, string) {
	now := metav1.Now()
	st := corev1.PodStatus{Phase: corev1.PodRunning, HostIP: "192.0.2.254", HostIPs: []corev1.HostIP{{IP: "192.0.2.254"}},
		PodIP: p.podIP(), PodIPs: []corev1.PodIP{{IP: p.podIP()}}, StartTime: &p.started}
	ready := true
	var short strings.Builder
	for _, c := range p.containers {
		cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, Ready: c.ready}
		switch {
		case c.pull:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ErrImagePull",
				Message: fmt.Sprintf("hollow kubelet: no image %q", c.spec.Image)}
		case isDone(c.done):
			code, reason := int32(0), "Completed"
			if c.err != nil {
				code, reason = 1, "Error"
			}
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason, StartedAt: p.started, FinishedAt: now}
		default:
			started := true
			cs.Started = &started
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: p.started}
		}
		ready = ready && c.ready
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		fmt.Fprintf(&short, "%s:%t:%t:%t;", c.spec.Name, c.ready, c.pull, isDone(c.done))
	}
	if ready != (p.readySince != metav1.Time{}) {
		p.readySince = metav1.Time{}
		if ready {
			p.readySince = now
		}
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s, since := corev1.ConditionFalse, p.started
		if ok {
			s, since = corev1.ConditionTrue, p.readySince
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: since}
	}
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: p.started},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: p.started},
		cond(corev1.ContainersReady, ready),
		cond(corev1.PodReady, ready),
	}
	return st, short.String()
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// terminate stops a deleted pod as a kubelet does (preStop hooks, then
// SIGTERM, within the grace period) and removes it.
func (k *Kubelet) terminate(ctx context.Context, pod *corev1.Pod) {
	k.mu.Lock()
	p := k.pods[pod.UID]
	if p != nil && p.stopping {
		k.mu.Unlock()
		return
	}
	if p != nil {
		p.stopping = true
	}
	k.mu.Unlock()
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	key, uid := client.ObjectKeyFromObject(pod), pod.UID
	go func() {
		if p != nil {
			k.stopContainers(p, grace)
		}
		zero := int64(0)
		gone := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}
		if err := k.c.Delete(ctx, gone, &client.DeleteOptions{GracePeriodSeconds: &zero,
			Preconditions: &metav1.Preconditions{UID: &uid}}); err != nil && !apierrs.IsNotFound(err) && ctx.Err() == nil {
			k.logf("removing pod %s: %v", key, err)
			k.mu.Lock()
			if p != nil {
				p.stopping = false // the next pass tries again
			}
			k.mu.Unlock()
		}
	}()
}

// stopContainers runs each container's preStop hook and then stops it, all
// containers at once, within grace (0: at once, no hooks), and frees the
// pod's address.
func (k *Kubelet) stopContainers(p *hollowPod, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), max(grace, time.Millisecond))
	defer cancel()
	var wg sync.WaitGroup
	for _, c := range p.containers {
		if c.cancel == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if h := c.spec.Lifecycle; grace > 0 && h != nil && h.PreStop != nil && h.PreStop.HTTPGet != nil {
				get := h.PreStop.HTTPGet
				req, err := http.NewRequestWithContext(ctx, http.MethodGet,
					"http://"+net.JoinHostPort(p.ip(), portOf(c.spec, get.Port.String()))+get.Path, nil)
				if err == nil {
					if resp, err := http.DefaultClient.Do(req); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}
			c.cancel()
			<-c.done
		}()
	}
	wg.Wait()
	k.mu.Lock()
	delete(k.pods, p.uid)
	delete(k.used, p.n)
	k.mu.Unlock()
}
