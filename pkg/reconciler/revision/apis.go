package revision

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	apierrs "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"
)

// DefaultAPIRecheck is how long a look at the cluster's optional APIs
// stands, and how soon a grouped revision waiting for LeaderWorkerSet is
// looked at again.
const DefaultAPIRecheck = 30 * time.Second

// The optional APIs the reconciler looks for, by group version and kind.
const (
	// VolcanoPodGroupVersion serves Volcano's PodGroup, which LWS makes
	// one of per group when its gang scheduling is set to Volcano.
	VolcanoPodGroupVersion = "scheduling.volcano.sh/v1beta1"
	// CoschedulingPodGroupVersion serves scheduler-plugins' PodGroup, of
	// its coscheduling plugin.
	CoschedulingPodGroupVersion = "scheduling.x-k8s.io/v1alpha1"
	podGroupKind                = "PodGroup"
	leaderWorkerSetKind         = "LeaderWorkerSet"
)

// ClusterAPIs are the optional APIs of the cluster that the reconciler
// uses or reports on.
type ClusterAPIs struct {
	// LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) runs serving groups.
	LeaderWorkerSet bool
	// Volcano's PodGroup (VolcanoPodGroupVersion): groups' pods are given
	// to Volcano's scheduler.
	Volcano bool
	// Coscheduling's PodGroup (CoschedulingPodGroupVersion): without
	// Volcano, groups' pods are held by a scheduling gate until the
	// reconciler made their group's PodGroup and labelled them
	// (podgroups.go).
	Coscheduling bool
}

// resourceLister is what the detector asks of a discovery client.
type resourceLister interface {
	ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error)
}

// apiDetector looks up the cluster's optional APIs through discovery and
// keeps the answer for a while: at most three small requests an
// interval, whatever the number of revisions. Unlike the manager's REST
// mapper, which remembers a kind once found, it also sees an API go.
type apiDetector struct {
	lister resourceLister
	every  time.Duration
	now    func() time.Time
	log    *slog.Logger

	mu    sync.Mutex
	known bool // a look was taken
	at    time.Time
	last  ClusterAPIs
}

// newAPIDetector returns a detector asking lister, whose answers stand for
// every (DefaultAPIRecheck when not positive).
func newAPIDetector(lister resourceLister, every time.Duration, log *slog.Logger) *apiDetector {
	if every <= 0 {
		every = DefaultAPIRecheck
	}
	return &apiDetector{lister: lister, every: every, now: time.Now, log: log}
}

// get returns the cluster's APIs, looking again when the last look is
// older than the interval. An API whose look fails (not a "not found")
// keeps its last answer (false before any); the failure is logged. No lock
// is held while discovery is asked: concurrent callers may both look.
func (d *apiDetector) get() ClusterAPIs {
	d.mu.Lock()
	if d.known && d.now().Sub(d.at) < d.every {
		c := d.last
		d.mu.Unlock()
		return c
	}
	prev, known := d.last, d.known
	d.mu.Unlock()

	c, err := d.look(prev)
	if err != nil {
		d.log.Warn("looking up the cluster's optional APIs", slog.Any("error", err))
	}
	if !known || c != prev {
		d.log.Info("cluster APIs", slog.Bool("leaderWorkerSet", c.LeaderWorkerSet),
			slog.Bool("volcano", c.Volcano), slog.Bool("coscheduling", c.Coscheduling))
	}
	d.mu.Lock()
	d.known, d.at, d.last = true, d.now(), c
	d.mu.Unlock()
	return c
}

// look asks discovery for each API; prev answers for those whose look
// fails.
func (d *apiDetector) look(prev ClusterAPIs) (ClusterAPIs, error) {
	var errs []error
	serves := func(gv, kind string, was bool) bool {
		ok, err := d.serves(gv, kind)
		if err != nil {
			errs = append(errs, err)
			return was
		}
		return ok
	}
	c := ClusterAPIs{
		LeaderWorkerSet: serves(lwsv1.GroupVersion.String(), leaderWorkerSetKind, prev.LeaderWorkerSet),
		Volcano:         serves(VolcanoPodGroupVersion, podGroupKind, prev.Volcano),
		Coscheduling:    serves(CoschedulingPodGroupVersion, podGroupKind, prev.Coscheduling),
	}
	return c, errors.Join(errs...)
}

// serves reports whether the cluster serves kind in group version gv: not
// found (no such group version) is false, not an error.
func (d *apiDetector) serves(gv, kind string) (bool, error) {
	list, err := d.lister.ServerResourcesForGroupVersion(gv)
	switch {
	case apierrs.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("discovery of %s: %w", gv, err)
	case list == nil:
		return false, nil
	}
	for _, r := range list.APIResources {
		if r.Kind == kind && !strings.Contains(r.Name, "/") { // not a subresource
			return true, nil
		}
	}
	return false, nil
}
