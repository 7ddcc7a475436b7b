package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// Target is what a Sync drives (an *activator.Activator).
type Target interface {
	SetServices([]activator.ServiceConfig) error
	SetEndpoints(fleet.Key, []fleet.Endpoint)
}

var _ Target = (*activator.Activator)(nil)

// Options of a Sync.
type Options struct {
	// Namespace limits the watch to one namespace; empty watches all.
	Namespace string
	// Logger for resync failures.
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

// Sync keeps a Target in step with the cluster.
type Sync struct {
	target Target
	cache  cache.Cache
	log    *slog.Logger
	poke   chan struct{}

	mapAddr func(string) string
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
	copts := cache.Options{Scheme: scheme}
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
	return &Sync{target: target, cache: c, log: log, poke: make(chan struct{}, 1), mapAddr: opts.MapAddress}, nil
}

// Run watches until ctx ends. It returns once the informers stop; an error
// when they could not start or sync.
func (s *Sync) Run(ctx context.Context) error {
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.trigger() },
		UpdateFunc: func(any, any) { s.trigger() },
		DeleteFunc: func(any) { s.trigger() },
	}
	for _, obj := range []client.Object{&v1alpha1.ModelService{}, &v1alpha1.ModelRevision{}, &discoveryv1.EndpointSlice{}} {
		inf, err := s.cache.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("handler for %T: %w", obj, err)
		}
	}
	errCh := make(chan error, 1)
	go func() { errCh <- s.cache.Start(ctx) }()
	if !s.cache.WaitForCacheSync(ctx) {
		return fmt.Errorf("informers did not sync: %w", context.Cause(ctx))
	}
	s.trigger()
	for {
		select {
		case <-ctx.Done():
			return <-errCh
		case <-s.poke:
			if err := s.resync(ctx); err != nil {
				s.log.Error("routing table not updated", slog.Any("error", err))
			}
		}
	}
}

func (s *Sync) trigger() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// resync rebuilds the whole routing table from the cache.
func (s *Sync) resync(ctx context.Context) error {
	var svcs v1alpha1.ModelServiceList
	var revs v1alpha1.ModelRevisionList
	var slices discoveryv1.EndpointSliceList
	for _, l := range []client.ObjectList{&svcs, &revs, &slices} {
		if err := s.cache.List(ctx, l); err != nil {
			return fmt.Errorf("listing: %w", err)
		}
	}
	revByName := map[string]*v1alpha1.ModelRevision{}
	for i := range revs.Items {
		r := &revs.Items[i]
		revByName[r.Namespace+"/"+r.Name] = r
	}
	// The Services of every revision role, by namespace/name.
	keyOfService := map[string]fleet.Key{}
	var cfgs []activator.ServiceConfig
	for i := range svcs.Items {
		ms := &svcs.Items[i]
		if len(ms.Status.Traffic) == 0 {
			continue // not routable yet (no ready revision)
		}
		sc := activator.ServiceConfig{Namespace: ms.Namespace, Name: ms.Name, Model: ms.Spec.Model, LoRAAdapters: ms.Spec.LoRAAdapters}
		if sc.Model == "" {
			sc.Model = ms.Name
		}
		if ms.Spec.Routing != nil {
			sc.Routing = ms.Spec.Routing.Plugins
		}
		seen := map[string]bool{}
		for _, t := range ms.Status.Traffic {
			pct := 0
			if t.Percent != nil {
				pct = int(*t.Percent)
			}
			sc.Traffic = append(sc.Traffic, traffic.Target{Revision: t.RevisionName, Percent: pct, Tag: t.Tag})
			if seen[t.RevisionName] {
				continue
			}
			seen[t.RevisionName] = true
			rev, ok := revByName[ms.Namespace+"/"+t.RevisionName]
			if !ok {
				s.log.Warn("traffic names a revision that does not exist", slog.String("service", ms.Name), slog.String("revision", t.RevisionName))
				continue
			}
			sc.Revisions = append(sc.Revisions, activator.RevisionConfig{Name: rev.Name,
				ContainerConcurrency: rev.Spec.ContainerConcurrency,
				Timeout:              time.Duration(rev.Spec.TimeoutSeconds) * time.Second,
				Disaggregated:        rev.Spec.Roles != nil,
				Tokenizer:            engine.Resolve(rev.Spec.Engine).RoutingTokenizer()})
			for _, role := range names.Roles(rev) {
				keyOfService[rev.Namespace+"/"+names.Service(rev, role)] = sc.RoleKey(rev.Name, role)
			}
		}
		if len(sc.Revisions) != len(seen) {
			continue // wait for the missing revision rather than route to nothing
		}
		cfgs = append(cfgs, sc)
	}
	if err := s.target.SetServices(cfgs); err != nil {
		return err
	}
	eps := map[fleet.Key][]fleet.Endpoint{}
	for key := range mapValues(keyOfService) {
		eps[key] = nil
	}
	for i := range slices.Items {
		sl := &slices.Items[i]
		key, ok := keyOfService[sl.Namespace+"/"+sl.Labels[discoveryv1.LabelServiceName]]
		if !ok {
			continue
		}
		port := int32(names.QueueProxyPort)
		for _, p := range sl.Ports {
			if p.Name != nil && *p.Name == names.QueueProxyPortName && p.Port != nil {
				port = *p.Port
			}
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) == 0 || (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) {
				continue
			}
			name := ep.Addresses[0]
			if ep.TargetRef != nil {
				name = ep.TargetRef.Name
			}
			addr := ep.Addresses[0]
			if s.mapAddr != nil {
				addr = s.mapAddr(addr)
			}
			eps[key] = append(eps[key], fleet.Endpoint{Name: name, Address: net.JoinHostPort(addr, strconv.Itoa(int(port)))})
		}
	}
	for key, list := range eps {
		s.target.SetEndpoints(key, list)
	}
	return nil
}

func mapValues(m map[string]fleet.Key) map[fleet.Key]bool {
	out := make(map[fleet.Key]bool, len(m))
	for _, k := range m {
		out[k] = true
	}
	return out
}
