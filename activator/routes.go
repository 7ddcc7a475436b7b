package activator

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// ServiceConfig is what the activator needs to know of a ModelService.
type ServiceConfig struct {
	Namespace string
	Name      string
	// Model is the name clients send; the engines serve it under this name.
	Model string
	// LoRAAdapters are adapter names also served by this service's engines.
	LoRAAdapters []string
	// Traffic resolves to concrete revisions (latestRevision already resolved).
	Traffic   []traffic.Target
	Revisions []RevisionConfig
	// Routing is the scheduler plugin set (spec.routing.plugins); empty =
	// scheduler.DefaultPlugins.
	Routing []v1alpha1.RoutingPlugin
}

// RevisionConfig is the data-plane view of one revision.
type RevisionConfig struct {
	Name string
	// ContainerConcurrency caps in-flight requests per replica; 0 = unlimited.
	ContainerConcurrency int
	// Timeout bounds one forwarded request; 0 = the activator's default.
	Timeout time.Duration
	// Disaggregated revisions run a prefill and a decode replica set
	// (fleet.Key roles fleet.RolePrefill and fleet.RoleDecode) instead of one unified set.
	Disaggregated bool
	// Tokenizer is how the revision's engine tokenizes (resolved per engine
	// type by pkg/engine.Resolve): with one, prefix routing keys on the
	// engine's tokens, as its KV events do (tokenize.go).
	Tokenizer v1alpha1.TokenizerSpec
}

// table is an immutable routing snapshot, swapped atomically.
type table struct {
	byModel   map[string]*service
	byAdapter map[string]*service
}

// lookup finds the service of a model or adapter name; adapter is the
// name when it is an adapter.
func (t *table) lookup(name string) (s *service, adapter string, ok bool) {
	if s, ok = t.byModel[name]; ok {
		return s, "", true
	}
	if s, ok = t.byAdapter[name]; ok {
		return s, name, true
	}
	return nil, "", false
}

type service struct {
	cfg       ServiceConfig
	split     *traffic.Split
	revisions map[string]*revisionRoute
}

type revisionRoute struct {
	cfg RevisionConfig
	rev *revision // the unified pool, or the decode pool when disaggregated
	// prefill is the prefill pool of a disaggregated revision, else nil.
	prefill *revision
	// tok is the tokenizer of a file Tokenizer, nil when it could not be loaded.
	tok textTokenizer
	// Metric children of the common case, resolved once.
	ok       prometheus.Counter
	duration prometheus.Observer
}

// Key returns the fleet key of a revision of this service (unified role).
func (s ServiceConfig) Key(revision string) fleet.Key {
	return fleet.Key{Namespace: s.Namespace, Service: s.Name, Revision: revision}
}

// RoleKey returns the fleet key of one role of a revision.
func (s ServiceConfig) RoleKey(revision, role string) fleet.Key {
	return fleet.Key{Namespace: s.Namespace, Service: s.Name, Revision: revision, Role: role}
}

func (s ServiceConfig) validate() error {
	if s.Name == "" || s.Model == "" {
		return fmt.Errorf("service %q: name and model are required", s.Name)
	}
	known := map[string]bool{}
	for _, r := range s.Revisions {
		known[r.Name] = true
	}
	for i, t := range s.Traffic {
		if !known[t.Revision] {
			return fmt.Errorf("service %q: traffic[%d] names unknown revision %q", s.Name, i, t.Revision)
		}
	}
	return nil
}
