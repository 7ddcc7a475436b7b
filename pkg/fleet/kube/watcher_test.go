package kube

import (
	"context"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// watchTimeout bounds the wait for one call of a watcher.
const watchTimeout = 30 * time.Second

// endpointSlice is an EndpointSlice of Service service with one endpoint
// per ip (pods <name>-a, <name>-b, ...), ready unless listed in notReady.
func endpointSlice(name, service string, port *discoveryv1.EndpointPort, ips []string, notReady ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
		Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4}
	if port != nil {
		s.Ports = []discoveryv1.EndpointPort{*port}
	}
	for i, ip := range ips {
		ready := true
		for _, n := range notReady {
			ready = ready && n != ip
		}
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: name + "-" + string(rune('a'+i))}})
	}
	return s
}

func namedPort(name string, n int32) *discoveryv1.EndpointPort {
	return &discoveryv1.EndpointPort{Name: &name, Port: &n}
}

// startWatcher runs a Watcher over a started cache of the test's API
// server, until the test ends.
func startWatcher(t *testing.T, opts WatcherOptions) (*Watcher, client.Client) {
	t.Helper()
	cfg := kubetest.Start(t)
	scheme := runtime.NewScheme()
	require.NoError(t, discoveryv1.AddToScheme(scheme))
	c, err := cache.New(cfg, cache.Options{Scheme: scheme})
	require.NoError(t, err)
	w := NewWatcher(c, opts)
	ctx, cancel := context.WithCancel(context.Background())
	cacheDone, watchDone := make(chan error, 1), make(chan error, 1)
	go func() { cacheDone <- c.Start(ctx) }()
	go func() { watchDone <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-watchDone)
		require.NoError(t, <-cacheDone)
	})
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	require.NoError(t, err)
	return w, cl
}

// calls records a watcher's calls.
type calls chan []fleet.Endpoint

func (c calls) fn(eps []fleet.Endpoint) { c <- eps }

// next waits for the next call.
func (c calls) next(t *testing.T) []fleet.Endpoint {
	t.Helper()
	select {
	case eps := <-c:
		return eps
	case <-time.After(watchTimeout):
		t.Fatal("the watcher was not called")
		return nil
	}
}

// until waits for a call with the endpoints want, in any order.
func (c calls) until(t *testing.T, want ...fleet.Endpoint) {
	t.Helper()
	deadline := time.After(watchTimeout)
	var got []fleet.Endpoint
	for {
		select {
		case got = <-c:
			if len(got) == len(want) && assert.ElementsMatch(noFail{}, want, got) {
				return
			}
		case <-deadline:
			t.Fatalf("the watcher never reported %v; last %v", want, got)
		}
	}
}

// noFail lets assert.ElementsMatch answer without failing the test.
type noFail struct{}

func (noFail) Errorf(string, ...any) {}

// A role's ready endpoints are the ready addresses of its Service's
// EndpointSlices, at the queue-proxy port, named after their pods; the
// watcher reports the whole set at first and after every change, including
// the slices' deletion, and each role sees only its own Service.
func TestWatcherFollowsEndpointSlices(t *testing.T) {
	w, c := startWatcher(t, WatcherOptions{})
	ctx := context.Background()
	http := namedPort("http", 8012)
	require.NoError(t, c.Create(ctx, endpointSlice("llama-00001-x", "llama-00001", http, []string{"10.0.0.1", "10.0.0.2"}, "10.0.0.2")))
	require.NoError(t, c.Create(ctx, endpointSlice("llama-00001-y", "llama-00001", namedPort("http", 9012), []string{"10.0.0.3"})))
	require.NoError(t, c.Create(ctx, endpointSlice("llama-00001-decode-x", "llama-00001-decode", http, []string{"10.0.1.1"})))

	unified, decode := make(calls, 100), make(calls, 100)
	defer w.Watch(fleet.Key{Namespace: "default", Service: "llama", Revision: "llama-00001"}, unified.fn)()
	defer w.Watch(fleet.Key{Namespace: "default", Service: "llama", Revision: "llama-00001", Role: fleet.RoleDecode}, decode.fn)()
	unified.until(t, fleet.Endpoint{Name: "llama-00001-x-a", Address: "10.0.0.1:8012"},
		fleet.Endpoint{Name: "llama-00001-y-a", Address: "10.0.0.3:9012"})
	decode.until(t, fleet.Endpoint{Name: "llama-00001-decode-x-a", Address: "10.0.1.1:8012"})

	// The second pod becomes ready.
	require.NoError(t, c.Update(ctx, withVersion(t, c, endpointSlice("llama-00001-x", "llama-00001", http, []string{"10.0.0.1", "10.0.0.2"}))))
	unified.until(t, fleet.Endpoint{Name: "llama-00001-x-a", Address: "10.0.0.1:8012"},
		fleet.Endpoint{Name: "llama-00001-x-b", Address: "10.0.0.2:8012"}, fleet.Endpoint{Name: "llama-00001-y-a", Address: "10.0.0.3:9012"})

	for _, name := range []string{"llama-00001-x", "llama-00001-y"} {
		require.NoError(t, c.Delete(ctx, &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}}))
	}
	unified.until(t)
}

// withVersion gives obj the resourceVersion of the stored object, for an
// update.
func withVersion(t *testing.T, c client.Client, obj *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	t.Helper()
	cur := &discoveryv1.EndpointSlice{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKeyFromObject(obj), cur))
	obj.ResourceVersion = cur.ResourceVersion
	return obj
}

// A slice without a port named http reaches the queue-proxy's default port;
// the address mapper rewrites every address; a watch with no slices is told
// so; a stopped watch hears nothing more, and a watcher may stop its own
// watch from its callback (callbacks run under no lock).
func TestWatcherPortsMappingAndStop(t *testing.T) {
	w, c := startWatcher(t, WatcherOptions{MapAddress: func(ip string) string { return strings.Replace(ip, "192.0.2.", "127.0.2.", 1) }})
	ctx := context.Background()
	key := fleet.Key{Namespace: "default", Service: "m", Revision: "m-00001", Role: fleet.RolePrefill}

	empty := make(calls, 100)
	defer w.Watch(key, empty.fn)()
	require.Empty(t, empty.next(t))

	// stop waits for a call under way: what the call does comes first.
	entered, release := make(chan struct{}), make(chan struct{})
	var order []string
	var orderMu sync.Mutex
	note := func(s string) { orderMu.Lock(); order = append(order, s); orderMu.Unlock() }
	var once sync.Once
	blocking := w.Watch(key, func([]fleet.Endpoint) {
		once.Do(func() { close(entered); <-release; note("call ended") })
	})
	<-entered
	stopped1 := make(chan struct{})
	go func() { blocking(); note("stop returned"); close(stopped1) }()
	goruntime.Gosched()
	close(release)
	<-stopped1
	require.Equal(t, []string{"call ended", "stop returned"}, order)

	stopped := make(calls, 100)
	stop := w.Watch(key, stopped.fn)
	require.Empty(t, stopped.next(t))
	stop()

	require.NoError(t, c.Create(ctx, endpointSlice("m-00001-prefill-x", "m-00001-prefill", namedPort("metrics", 9090), []string{"192.0.2.7"})))
	empty.until(t, fleet.Endpoint{Name: "m-00001-prefill-x-a", Address: "127.0.2.7:8012"})
	// A second change, seen by the live watch: the delivery of the first is over.
	require.NoError(t, c.Delete(ctx, &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "m-00001-prefill-x"}}))
	empty.until(t)
	require.Empty(t, stopped, "a stopped watch is not called")
}
