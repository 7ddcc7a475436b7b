package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/tenant"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// serviceState is a ModelService in local mode and its revisions.
type serviceState struct {
	ms        *v1alpha1.ModelService // as last applied
	revisions []*localRevision       // in generation order, the latest last
}

// localRevision is an immutable snapshot of a service's template and the
// replica sets that run it.
type localRevision struct {
	name     string
	gen      int
	ms       *v1alpha1.ModelService // the service as it was when the revision was created
	template []byte                 // canonical JSON of the template
	roles    []*revisionState
	ready    bool // has had a ready replica (or is the service's first revision)
}

func (s *serviceState) latest() *localRevision { return s.revisions[len(s.revisions)-1] }

// latestReady is the newest revision that has shown it can serve.
func (s *serviceState) latestReady() string {
	for i := len(s.revisions) - 1; i >= 0; i-- {
		if s.revisions[i].ready {
			return s.revisions[i].name
		}
	}
	return ""
}

func (s *serviceState) known(name string) bool {
	for _, r := range s.revisions {
		if r.name == name {
			return true
		}
	}
	return false
}

// templateKey is what makes a revision: the template, and whether the
// engines serve LoRA adapters at all. Which adapters they serve is not:
// adapters added or removed later are loaded and unloaded at run time.
func templateKey(ms *v1alpha1.ModelService) []byte {
	b, err := json.Marshal(struct {
		Template v1alpha1.RevisionTemplate `json:"template"`
		LoRA     bool                      `json:"lora,omitempty"`
	}{ms.Spec.Template, len(ms.Spec.LoRAAdapters) > 0})
	if err != nil { // plain data: cannot happen
		panic("local: marshal template: " + err.Error())
	}
	return b
}

// reconcile makes the running platform match svcs: a new service gets its
// first revision; a changed template gets the next revision, while the
// previous ones keep serving as spec.traffic says (100% to the latest ready
// revision when it says nothing); revisions no traffic target names any more
// stop once a newer one is ready; removed services stop. On error nothing
// changes.
func (p *Platform) reconcile(svcs []*v1alpha1.ModelService) error {
	p.svcMu.Lock()
	defer p.svcMu.Unlock()
	for _, ms := range svcs {
		warnKubernetesOnly(p.log, ms)
	}
	return p.reconcileLocked(svcs)
}

// warnKubernetesOnly says which fields of a ModelService kvasir local
// reads but cannot act on: the cpu and memoryGiB targets need the
// resource metrics API of a cluster.
func warnKubernetesOnly(log *slog.Logger, ms *v1alpha1.ModelService) {
	scalings := map[string]*v1alpha1.ScalingSpec{"spec.template.scaling": &ms.Spec.Template.Scaling}
	if r := ms.Spec.Template.Roles; r != nil {
		if r.Prefill != nil {
			scalings["spec.template.roles.prefill.scaling"] = r.Prefill.Scaling
		}
		if r.Decode != nil {
			scalings["spec.template.roles.decode.scaling"] = r.Decode.Scaling
		}
	}
	for path, sc := range scalings {
		if sc == nil || sc.Target == nil {
			continue
		}
		for name, v := range map[string]*float64{"cpu": sc.Target.CPU, "memoryGiB": sc.Target.MemoryGiB} {
			if v != nil {
				log.Warn("this target needs the resource metrics API of a Kubernetes cluster: kvasir local does not scale on it",
					slog.String("service", ms.Name), slog.String("field", path+".target."+name))
			}
		}
	}
}

// servicePlan is what reconciling does to one service.
type servicePlan struct {
	st     *serviceState // the service's state: new and empty for a new service
	ms     *v1alpha1.ModelService
	newRev *localRevision   // to start, nil if none
	keep   []*localRevision // the revisions from now on, in generation order
	retire []*localRevision // to stop
}

// plan is what reconciling the platform to a set of ModelServices does:
// per service, a revision to start and revisions to retire; the
// activators' routing table; the LoRA adapter files to write (every
// service's); the services to stop.
type plan struct {
	services []servicePlan
	configs  []activator.ServiceConfig
	removed  []string // ids of services gone from the file
}

// planReconcile plans reconciling the services in current to svcs, without
// changing anything: a new service gets its first revision; a changed
// template the next one; what traffic names, the latest ready revision and
// anything newer stay; the rest retire.
func planReconcile(current map[string]*serviceState, svcs []*v1alpha1.ModelService) (plan, error) {
	var pl plan
	inFile := map[string]bool{}
	for _, ms := range svcs {
		id := serviceID(ms)
		inFile[id] = true
		sp, cfg, err := planService(current[id], ms)
		if err != nil {
			return plan{}, err
		}
		pl.services = append(pl.services, sp)
		pl.configs = append(pl.configs, cfg)
	}
	for id := range current {
		if !inFile[id] {
			pl.removed = append(pl.removed, id)
		}
	}
	sort.Strings(pl.removed)
	return pl, nil
}

func serviceID(ms *v1alpha1.ModelService) string { return ms.Namespace + "/" + ms.Name }

// planService plans one service (st nil when new) and its routing.
func planService(st *serviceState, ms *v1alpha1.ModelService) (servicePlan, activator.ServiceConfig, error) {
	sp := servicePlan{st: st, ms: ms}
	key := templateKey(ms)
	switch {
	case st == nil:
		sp.newRev = &localRevision{name: v1alpha1.RevisionName(ms.Name, 1), gen: 1, ms: ms, template: key, ready: true}
		sp.st = &serviceState{}
	case !bytes.Equal(st.latest().template, key):
		gen := st.latest().gen + 1
		sp.newRev = &localRevision{name: v1alpha1.RevisionName(ms.Name, gen), gen: gen, ms: ms, template: key}
	}
	revs := sp.st.revisions
	if sp.newRev != nil {
		revs = append(append([]*localRevision(nil), revs...), sp.newRev)
	}
	view := &serviceState{revisions: revs}
	latestReady := view.latestReady()
	targets, err := traffic.Resolve(ms.Spec.Traffic, latestReady, view.known)
	if err != nil {
		return sp, activator.ServiceConfig{}, fmt.Errorf("ModelService %q: %w", ms.Name, err)
	}
	if _, err := traffic.New(append([]traffic.Target(nil), targets...)); err != nil {
		return sp, activator.ServiceConfig{}, fmt.Errorf("ModelService %q: spec.%w", ms.Name, err)
	}
	// Keep what traffic names, the latest ready revision and anything
	// newer (still proving itself); retire the rest.
	ref := traffic.Referenced(targets)
	passed := false
	for _, r := range revs {
		if r.name == latestReady {
			passed = true
		}
		if ref[r.name] || r.name == latestReady || (passed && !r.ready) {
			sp.keep = append(sp.keep, r)
		} else if r != sp.newRev {
			sp.retire = append(sp.retire, r)
		}
	}
	cfg := activator.ServiceConfigOf(ms, targets)
	for _, r := range sp.keep {
		cfg.Revisions = append(cfg.Revisions, activator.RevisionConfigOf(r.name, &r.ms.Spec.Template))
	}
	if sp.newRev != nil && !slices.Contains(sp.keep, sp.newRev) {
		sp.keep = append(sp.keep, sp.newRev) // starts, serves once ready
	}
	return sp, cfg, nil
}

func (p *Platform) reconcileLocked(svcs []*v1alpha1.ModelService) error {
	pl, err := planReconcile(p.services, svcs)
	if err != nil {
		return err
	}
	if err := p.applyPlan(pl); err != nil {
		return err
	}
	p.applied = svcs
	return nil
}

// applyPlan carries a plan out: the activators learn the routing, the
// queue-proxies every service's LoRA adapters as they are now; then new
// revisions start and retired ones and removed services stop.
func (p *Platform) applyPlan(pl plan) error {
	if err := p.act.SetServices(pl.configs); err != nil {
		return err
	}
	for _, sp := range pl.services {
		if err := p.writeLoRAFile(sp.ms); err != nil {
			return err
		}
	}
	for _, sp := range pl.services {
		if err := p.applyService(sp); err != nil {
			return err
		}
	}
	for _, id := range pl.removed {
		st := p.services[id]
		p.log.Info("service removed from the file", slog.String("service", st.ms.Name))
		for _, r := range st.revisions {
			p.stopRevision(r)
		}
		delete(p.services, id)
	}
	return nil
}

// applyService starts a service's new revision and stops its retired ones.
func (p *Platform) applyService(sp servicePlan) error {
	if sp.newRev != nil {
		first := sp.newRev.gen == 1
		if err := p.startRevision(sp.newRev, first); err != nil {
			return err
		}
		if !first {
			p.log.Info("new revision", slog.String("service", sp.ms.Name), slog.String("revision", sp.newRev.name))
		}
	}
	for _, r := range sp.retire {
		p.log.Info("revision retired: no traffic names it", slog.String("service", sp.ms.Name), slog.String("revision", r.name))
		p.stopRevision(r)
	}
	sp.st.revisions = sp.keep
	sp.st.ms = sp.ms
	p.services[serviceID(sp.ms)] = sp.st
	return nil
}

// stopRevision stops every replica set of a revision.
func (p *Platform) stopRevision(r *localRevision) {
	for _, rs := range r.roles {
		p.stopRole(rs)
	}
}

// startRevision runs a revision's replica sets. A revision after the first
// starts with at least one replica, to show it can serve before traffic
// moves to it.
func (p *Platform) startRevision(r *localRevision, first bool) error {
	ms, tmpl := r.ms, r.ms.Spec.Template
	minInitial := 1
	if first {
		minInitial = 0
	}
	onReady := func() { p.revisionReady(r) }
	if tmpl.Roles == nil {
		rs, err := p.startRole(ms, fleet.Key{Namespace: ms.Namespace, Service: ms.Name, Revision: r.name}, tmpl.Scaling, nil, minInitial, onReady)
		if err != nil {
			return err
		}
		r.roles = append(r.roles, rs)
		return nil
	}
	for _, role := range []struct {
		name string
		spec *v1alpha1.RoleSpec
	}{{fleet.RolePrefill, tmpl.Roles.Prefill}, {fleet.RoleDecode, tmpl.Roles.Decode}} {
		scaling := tmpl.RoleScaling(role.name)
		args := role.spec.Args
		key := fleet.Key{Namespace: ms.Namespace, Service: ms.Name, Revision: r.name, Role: role.name}
		var ready func()
		if role.name == fleet.RoleDecode { // a disaggregated revision serves once its decode role does
			ready = onReady
		}
		rs, err := p.startRole(ms, key, scaling, args, minInitial, ready)
		if err != nil {
			return err
		}
		r.roles = append(r.roles, rs)
	}
	return nil
}

// revisionReady is called (possibly under the runtime's lock: it must not
// block) when a revision has a ready replica; the platform's ready loop
// (runReadyLoop) reconsiders traffic the first time.
func (p *Platform) revisionReady(r *localRevision) { p.ready.add(r) }

// readyQueue hands revisions that became ready from the runtime's
// callbacks, which must not block, to one goroutine.
type readyQueue struct {
	wake chan struct{} // holds a signal while pending is not empty

	mu      sync.Mutex
	pending []*localRevision
}

func newReadyQueue() *readyQueue { return &readyQueue{wake: make(chan struct{}, 1)} }

// add queues r once, without blocking.
func (q *readyQueue) add(r *localRevision) {
	q.mu.Lock()
	queued := slices.Contains(q.pending, r)
	if !queued {
		q.pending = append(q.pending, r)
	}
	q.mu.Unlock()
	if !queued {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// take empties the queue.
func (q *readyQueue) take() []*localRevision {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.pending
	q.pending = nil
	return out
}

// runReadyLoop starts the goroutine that marks revisions ready and moves
// traffic to them; stop ends it and waits for it.
func (p *Platform) runReadyLoop() (stop func()) {
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-p.ready.wake:
				for _, r := range p.ready.take() {
					p.markReady(ctx, r)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// markReady marks a revision ready, the first time, and reconsiders
// traffic.
func (p *Platform) markReady(ctx context.Context, r *localRevision) {
	p.svcMu.Lock()
	defer p.svcMu.Unlock()
	if r.ready || ctx.Err() != nil {
		return
	}
	r.ready = true
	p.log.Info("revision ready", slog.String("revision", r.name))
	if err := p.reconcileLocked(p.applied); err != nil {
		p.log.Error("moving traffic to a ready revision failed", slog.String("revision", r.name), slog.Any("error", err))
	}
}

// watch re-reads the file when it changes and applies it; a file that does
// not load is reported and the running configuration stays.
func (p *Platform) watch(ctx context.Context) {
	every := p.opts.WatchInterval
	if every < 0 {
		return
	}
	if every == 0 {
		every = time.Second
	}
	last := fileSum(p.opts.File)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sum := fileSum(p.opts.File)
		if sum == last {
			continue
		}
		last = sum
		cfg, err := loadConfig(p.opts)
		if err == nil {
			err = p.apply(cfg)
		}
		if err != nil {
			p.log.Error("the changed file was not applied; the running configuration stays", slog.String("file", p.opts.File), slog.Any("error", err))
			continue
		}
		p.log.Info("applied the changed file", slog.String("file", p.opts.File))
	}
}

// config is what a file configures: its services and its tenants.
type config struct {
	services []*v1alpha1.ModelService
	tenants  []activator.TenantConfig
	keys     int // the tenants' keys, for the log
}

// loadConfig reads the file: its ModelServices, and its Tenants with their
// keys resolved from kvasir local's environment. With --require-auth a file
// without Tenants is an error. No error holds a key.
func loadConfig(opts Options) (config, error) {
	path := opts.File
	data, err := os.ReadFile(path)
	if err != nil {
		return config{}, fmt.Errorf("reading %s: %w", path, err)
	}
	svcs, err := Load(path, data)
	if err != nil {
		return config{}, err
	}
	ts, err := LoadTenants(path, data)
	if err != nil {
		return config{}, err
	}
	cfg := config{services: svcs}
	for _, t := range ts {
		digests, err := tenant.ResolveKeys(t, opts.LookupEnv)
		if err != nil {
			return config{}, fmt.Errorf("%s: Tenant %q: %w", path, t.Name, err)
		}
		cfg.tenants = append(cfg.tenants, activator.TenantConfigOf(t, digests))
		cfg.keys += len(digests)
	}
	if err := activator.ValidateTenants(cfg.tenants); err != nil {
		return config{}, fmt.Errorf("%s: %w", path, err)
	}
	if opts.RequireAuth && len(cfg.tenants) == 0 {
		return config{}, fmt.Errorf("%s: no Tenant defined, and --require-auth refuses to serve the API open", path)
	}
	return cfg, nil
}

// apply reconciles the services, then gives the tenants to every
// activator; on error nothing changes.
func (p *Platform) apply(cfg config) error {
	if err := p.reconcile(cfg.services); err != nil {
		return err
	}
	for _, a := range p.act.acts {
		if err := a.SetTenants(cfg.tenants); err != nil { // validated by loadConfig: cannot happen
			return err
		}
	}
	if len(cfg.tenants) == 0 {
		p.log.Warn("no Tenant defined: the API is open to anyone who can reach it", slog.String("file", p.opts.File))
	} else {
		p.log.Info("API keys required", slog.Int("tenants", len(cfg.tenants)), slog.Int("keys", cfg.keys))
	}
	return nil
}

func fileSum(path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
}

// loraFile is where the platform keeps a service's LoRA adapters for the
// queue-proxies of its revisions (engine.LoRAFile).
func (p *Platform) loraFile(ms *v1alpha1.ModelService) string {
	return filepath.Join(p.opts.LogDir, "lora", fileSafe(ms.Namespace)+"_"+fileSafe(ms.Name)+".json")
}

// writeLoRAFile writes a service's adapters, atomically, for its
// queue-proxies to follow.
func (p *Platform) writeLoRAFile(ms *v1alpha1.ModelService) error {
	path := p.loraFile(ms)
	b, err := json.Marshal(engine.LoRAFile{LoRAAdapters: append([]string{}, ms.Spec.LoRAAdapters...)})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("LoRA adapters of %s: %w", ms.Name, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".lora-*")
	if err != nil {
		return fmt.Errorf("LoRA adapters of %s: %w", ms.Name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("LoRA adapters of %s: %w", ms.Name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("LoRA adapters of %s: %w", ms.Name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("LoRA adapters of %s: %w", ms.Name, err)
	}
	return nil
}

// fileSafe keeps a name within one path element: every character but
// letters, digits, '-' and '.' becomes '_', and a leading '.' too.
func fileSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || (c == '.' && i > 0)
		if !ok {
			b[i] = '_'
		}
	}
	return string(b)
}
