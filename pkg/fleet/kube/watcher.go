package kube

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// WatcherOptions configure a Watcher.
type WatcherOptions struct {
	// MapAddress, when set, rewrites each endpoint address before use. For
	// tests that run pods on loopback: the API server rejects loopback
	// addresses in EndpointSlices.
	MapAddress func(string) string
}

// Watcher reports a revision role's ready endpoints: the ready addresses of
// its Service's (names.Service) EndpointSlices, at the queue-proxy port
// (names.QueueProxyPortName, names.QueueProxyPort when the slice does not
// name it), each named after the pod it targets. It reads a
// controller-runtime cache that its owner starts; Run calls the watchers,
// from one goroutine and under no lock.
type Watcher struct {
	cache   cache.Cache
	mapAddr func(string) string
	wake    chan struct{}

	mu      sync.Mutex
	watches map[client.ObjectKey]map[*watch]bool // by the Service watched
	dirty   map[client.ObjectKey]bool            // Services whose watchers are due a call
}

var _ fleet.Watcher = (*Watcher)(nil)

// watch is one Watch call.
type watch struct {
	fn func([]fleet.Endpoint)

	callMu  sync.Mutex // held while fn runs, so that stop waits for a call
	stopped bool       // guarded by callMu
}

// call hands eps to fn unless the watch stopped.
func (wt *watch) call(eps []fleet.Endpoint) {
	wt.callMu.Lock()
	defer wt.callMu.Unlock()
	if !wt.stopped {
		wt.fn(eps)
	}
}

// stop ends the watch: a call under way finishes first, and none starts
// after.
func (wt *watch) stop() {
	wt.callMu.Lock()
	wt.stopped = true
	wt.callMu.Unlock()
}

// NewWatcher returns a Watcher over c, which must be able to list and watch
// EndpointSlices (discoveryv1 in its scheme).
func NewWatcher(c cache.Cache, opts WatcherOptions) *Watcher {
	return &Watcher{cache: c, mapAddr: opts.MapAddress, wake: make(chan struct{}, 1),
		watches: map[client.ObjectKey]map[*watch]bool{}, dirty: map[client.ObjectKey]bool{}}
}

// serviceOf is the Service whose EndpointSlices hold a role's endpoints.
func serviceOf(key fleet.Key) client.ObjectKey {
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Revision}}
	return client.ObjectKey{Namespace: key.Namespace, Name: names.Service(rev, key.Role)}
}

// Watch implements fleet.Watcher. fn is first called, from Run's goroutine,
// once the cache has synced; stop waits for a call of fn under way, and fn
// is not called after stop returns (so fn must not call stop).
func (w *Watcher) Watch(key fleet.Key, fn func(ready []fleet.Endpoint)) (stop func()) {
	svc, wt := serviceOf(key), &watch{fn: fn}
	w.mu.Lock()
	if w.watches[svc] == nil {
		w.watches[svc] = map[*watch]bool{}
	}
	w.watches[svc][wt] = true
	w.dirty[svc] = true
	w.mu.Unlock()
	w.poke()
	return func() {
		wt.stop()
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.watches[svc], wt)
		if len(w.watches[svc]) == 0 {
			delete(w.watches, svc)
		}
	}
}

// Run follows the EndpointSlices and calls the watchers until ctx ends. It
// returns an error when it cannot follow them.
func (w *Watcher) Run(ctx context.Context) error {
	inf, err := w.cache.GetInformer(ctx, &discoveryv1.EndpointSlice{})
	if err != nil {
		return fmt.Errorf("informer for EndpointSlices: %w", err)
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    w.changed,
		UpdateFunc: func(_, obj any) { w.changed(obj) },
		DeleteFunc: w.changed,
	})
	if err != nil {
		return fmt.Errorf("handler for EndpointSlices: %w", err)
	}
	defer func() { _ = inf.RemoveEventHandler(reg) }()
	if !toolscache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return nil // ctx ended
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
			w.deliver(ctx)
		}
	}
}

func (w *Watcher) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// changed marks the Service of an EndpointSlice that was added, updated or
// deleted, when watched.
func (w *Watcher) changed(obj any) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	svc := client.ObjectKey{Namespace: sl.Namespace, Name: sl.Labels[discoveryv1.LabelServiceName]}
	w.mu.Lock()
	_, watched := w.watches[svc]
	if watched {
		w.dirty[svc] = true
	}
	w.mu.Unlock()
	if watched {
		w.poke()
	}
}

// deliver calls the watchers of every marked Service with its endpoints.
func (w *Watcher) deliver(ctx context.Context) {
	w.mu.Lock()
	due := make(map[client.ObjectKey][]*watch, len(w.dirty))
	for svc := range w.dirty {
		for wt := range w.watches[svc] {
			due[svc] = append(due[svc], wt)
		}
	}
	clear(w.dirty)
	w.mu.Unlock()
	for svc, watches := range due {
		eps, err := w.endpoints(ctx, svc)
		if err != nil { // the cache is stopping; try again on the next change
			w.mu.Lock()
			w.dirty[svc] = true
			w.mu.Unlock()
			continue
		}
		for _, wt := range watches {
			wt.call(slices.Clone(eps))
		}
	}
}

// endpoints lists a Service's ready endpoints from its EndpointSlices.
func (w *Watcher) endpoints(ctx context.Context, svc client.ObjectKey) ([]fleet.Endpoint, error) {
	var list discoveryv1.EndpointSliceList
	if err := w.cache.List(ctx, &list, client.InNamespace(svc.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: svc.Name}); err != nil {
		return nil, fmt.Errorf("listing the EndpointSlices of %s: %w", svc, err)
	}
	var out []fleet.Endpoint
	for i := range list.Items {
		out = append(out, w.readyOf(&list.Items[i])...)
	}
	return out, nil
}

// readyOf returns the ready endpoints of one EndpointSlice.
func (w *Watcher) readyOf(sl *discoveryv1.EndpointSlice) []fleet.Endpoint {
	port := strconv.Itoa(int(queueProxyPort(sl)))
	var out []fleet.Endpoint
	for _, ep := range sl.Endpoints {
		if len(ep.Addresses) == 0 || (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) {
			continue
		}
		addr, name := ep.Addresses[0], ep.Addresses[0]
		if ep.TargetRef != nil {
			name = ep.TargetRef.Name
		}
		if w.mapAddr != nil {
			addr = w.mapAddr(addr)
		}
		out = append(out, fleet.Endpoint{Name: name, Address: net.JoinHostPort(addr, port)})
	}
	return out
}

// queueProxyPort is the port of an EndpointSlice named
// names.QueueProxyPortName, else names.QueueProxyPort.
func queueProxyPort(sl *discoveryv1.EndpointSlice) int32 {
	port := int32(names.QueueProxyPort)
	for _, p := range sl.Ports {
		if p.Name != nil && *p.Name == names.QueueProxyPortName && p.Port != nil {
			port = *p.Port
		}
	}
	return port
}
