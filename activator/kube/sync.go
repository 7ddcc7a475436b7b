package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	fleetkube "github.com/kvasir-serving/kvasir/pkg/fleet/kube"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// Target is what a Sync drives (an *activator.Activator).
type Target interface {
	SetServices([]activator.ServiceConfig) error
	SetEndpoints(fleet.Key, []fleet.Endpoint)
	SetTenants([]activator.TenantConfig) error
}

var _ Target = (*activator.Activator)(nil)

// Options of a Sync.
type Options struct {
	// Namespace limits the watch to one namespace; empty watches all.
	Namespace string
	// Logger for resync failures and the tenants loaded or left out.
	Logger *slog.Logger
	// MapAddress, when set, rewrites each endpoint address before use. For
	// tests that run pods on loopback: the API server rejects loopback
	// addresses in EndpointSlices.
	MapAddress func(string) string
}

// RBAC of the activator (make generate writes config/'s kvasir-activator
// role from these markers): it only reads.
// +kubebuilder:rbac:groups=serving.kvasir.dev,resources=modelservices;modelrevisions,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch

// Sync keeps a Target in step with the cluster: the routing table follows
// the ModelServices' resolved traffic and their ModelRevisions; the
// endpoints of every revision role it routes to come from a
// fleet.Watcher over EndpointSlices (pkg/fleet/kube).
type Sync struct {
	target  Target
	cache   cache.Cache
	watcher *fleetkube.Watcher
	log     *slog.Logger
	poke    chan struct{}
	// pokeTenants resyncs the tenants alone: Secrets change more often than
	// the routing.
	pokeTenants chan struct{}
	// tenantStates is what was last logged of each tenant; only Run's
	// goroutine uses it.
	tenantStates map[string]string
	// closed is the tenant that closes the API while no Tenant resolves;
	// wasClosed whether it did at the last resync (Run's goroutine only).
	closed    activator.TenantConfig
	wasClosed bool

	// watches are the roles whose endpoints reach the target, with the
	// function that stops each; only Run's goroutine uses them.
	watches map[fleet.Key]func()
}

// New prepares a Sync; Run starts it.
func New(cfg *rest.Config, target Target, opts Options) (*Sync, error) {
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := discoveryv1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	copts := cache.Options{Scheme: scheme,
		ByObject: map[client.Object]cache.ByObject{&corev1.Secret{}: {Transform: keepSecretData}}}
	if opts.Namespace != "" {
		copts.DefaultNamespaces = map[string]cache.Config{opts.Namespace: {}}
	}
	c, err := cache.New(cfg, copts)
	if err != nil {
		return nil, fmt.Errorf("informer cache: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	closed, err := closedTenant()
	if err != nil {
		return nil, err
	}
	return &Sync{target: target, cache: c, log: log, poke: make(chan struct{}, 1), pokeTenants: make(chan struct{}, 1), closed: closed,
		watcher: fleetkube.NewWatcher(c, fleetkube.WatcherOptions{MapAddress: opts.MapAddress}),
		watches: map[fleet.Key]func(){}}, nil
}

// Run watches until ctx ends. It returns once the informers stop; an error
// when they could not start or sync.
func (s *Sync) Run(ctx context.Context) error {
	if err := s.addHandlers(ctx); err != nil {
		return err
	}
	if err := s.addTenantHandlers(ctx); err != nil {
		return err
	}
	// The cache and the watcher stop with Run, whichever way it returns.
	cctx, stopCache := context.WithCancel(ctx)
	wctx, stopWatcher := context.WithCancel(ctx)
	errCh, watchErr := make(chan error, 1), make(chan error, 1)
	go func() { errCh <- s.cache.Start(cctx) }()
	go func() { watchErr <- s.watcher.Run(wctx) }()
	defer func() {
		stopWatcher()
		stopCache()
	}()
	if !s.cache.WaitForCacheSync(ctx) {
		return fmt.Errorf("informers did not sync: %w", context.Cause(ctx))
	}
	defer s.unwatchAll()
	s.syncTenants(ctx) // before the first routes: never serve open while tenants load
	s.trigger()
	for {
		select {
		case <-ctx.Done():
			return errors.Join(<-errCh, <-watchErr)
		case err := <-watchErr:
			if err == nil { // ctx ended
				return <-errCh
			}
			return fmt.Errorf("following EndpointSlices: %w", err)
		case <-s.poke:
			if err := s.resync(ctx); err != nil {
				s.log.Error("routing table not updated", slog.Any("error", err))
			}
		case <-s.pokeTenants:
			s.syncTenants(ctx)
		}
	}
}

// syncTenants resyncs the tenants, logging a failure.
func (s *Sync) syncTenants(ctx context.Context) {
	if err := s.resyncTenants(ctx); err != nil {
		s.log.Error("tenants not updated", slog.Any("error", err))
	}
}

// addHandlers resyncs on every change of a ModelService or ModelRevision.
func (s *Sync) addHandlers(ctx context.Context) error {
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.trigger() },
		UpdateFunc: func(any, any) { s.trigger() },
		DeleteFunc: func(any) { s.trigger() },
	}
	for _, obj := range []client.Object{&v1alpha1.ModelService{}, &v1alpha1.ModelRevision{}} {
		inf, err := s.cache.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("handler for %T: %w", obj, err)
		}
	}
	return nil
}

func (s *Sync) trigger() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// resync rebuilds the whole routing table from the cache, then follows the
// endpoints of the roles it routes to.
func (s *Sync) resync(ctx context.Context) error {
	var svcs v1alpha1.ModelServiceList
	var revs v1alpha1.ModelRevisionList
	for _, l := range []client.ObjectList{&svcs, &revs} {
		if err := s.cache.List(ctx, l); err != nil {
			return fmt.Errorf("listing: %w", err)
		}
	}
	revByName := map[string]*v1alpha1.ModelRevision{}
	for i := range revs.Items {
		r := &revs.Items[i]
		revByName[r.Namespace+"/"+r.Name] = r
	}
	var cfgs []activator.ServiceConfig
	keys := map[fleet.Key]bool{}
	for i := range svcs.Items {
		if sc, ok := s.serviceConfig(&svcs.Items[i], revByName); ok {
			cfgs = append(cfgs, sc)
			for _, rc := range sc.Revisions {
				for _, role := range fleet.Roles(rc.Disaggregated) {
					keys[sc.RoleKey(rc.Name, role)] = true
				}
			}
		}
	}
	if err := s.target.SetServices(cfgs); err != nil {
		return err
	}
	s.follow(keys)
	return nil
}

// serviceConfig is the routing of a ModelService by its resolved traffic
// (status.traffic); ok is false while it is not routable: no revision is
// ready yet, or its traffic names a revision not in the cache (rather than
// route to nothing, wait for it).
func (s *Sync) serviceConfig(ms *v1alpha1.ModelService, revByName map[string]*v1alpha1.ModelRevision) (sc activator.ServiceConfig, ok bool) {
	if len(ms.Status.Traffic) == 0 {
		return sc, false
	}
	sc = activator.ServiceConfigOf(ms, targetsOf(ms.Status.Traffic))
	seen := map[string]bool{}
	for _, t := range ms.Status.Traffic {
		if seen[t.RevisionName] {
			continue
		}
		seen[t.RevisionName] = true
		rev, ok := revByName[ms.Namespace+"/"+t.RevisionName]
		if !ok {
			s.log.Warn("traffic names a revision that does not exist", slog.String("service", ms.Name), slog.String("revision", t.RevisionName))
			continue
		}
		sc.Revisions = append(sc.Revisions, activator.RevisionConfigOf(rev.Name, &rev.Spec.RevisionTemplate))
	}
	return sc, len(sc.Revisions) == len(seen)
}

// targetsOf is the activator's view of a ModelService's resolved traffic.
func targetsOf(status []v1alpha1.TrafficTarget) []traffic.Target {
	out := make([]traffic.Target, 0, len(status))
	for _, t := range status {
		pct := 0
		if t.Percent != nil {
			pct = int(*t.Percent)
		}
		out = append(out, traffic.Target{Revision: t.RevisionName, Percent: pct, Tag: t.Tag})
	}
	return out
}

// follow makes the target hear the endpoints of exactly the roles in keys:
// a new role is watched, a role no longer routed to is not.
func (s *Sync) follow(keys map[fleet.Key]bool) {
	for key, stop := range s.watches {
		if !keys[key] {
			stop()
			delete(s.watches, key)
		}
	}
	for key := range keys {
		if _, ok := s.watches[key]; !ok {
			s.watches[key] = s.watcher.Watch(key, func(eps []fleet.Endpoint) { s.target.SetEndpoints(key, eps) })
		}
	}
}

// unwatchAll stops every watch.
func (s *Sync) unwatchAll() { s.follow(nil) }
