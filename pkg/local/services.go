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
	"time"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
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

// revisionName is the name of a service's n-th revision.
func revisionName(svc string, n int) string { return fmt.Sprintf("%s-%05d", svc, n) }

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

func (p *Platform) reconcileLocked(svcs []*v1alpha1.ModelService) error {
	type plan struct {
		st      *serviceState
		ms      *v1alpha1.ModelService
		newRev  *localRevision // to start, nil if none
		targets []traffic.Target
		keep    []*localRevision
		retire  []*localRevision
	}
	var plans []plan
	for _, ms := range svcs {
		id := ms.Namespace + "/" + ms.Name
		st := p.services[id]
		pl := plan{ms: ms}
		key := templateKey(ms)
		switch {
		case st == nil:
			pl.newRev = &localRevision{name: revisionName(ms.Name, 1), gen: 1, ms: ms, template: key, ready: true}
			st = &serviceState{}
		case !bytes.Equal(st.latest().template, key):
			gen := st.latest().gen + 1
			pl.newRev = &localRevision{name: revisionName(ms.Name, gen), gen: gen, ms: ms, template: key}
		}
		pl.st = st
		revs := st.revisions
		if pl.newRev != nil {
			revs = append(append([]*localRevision(nil), revs...), pl.newRev)
		}
		view := &serviceState{revisions: revs}
		targets, err := traffic.Resolve(ms.Spec.Traffic, view.latestReady(), view.known)
		if err != nil {
			return fmt.Errorf("ModelService %q: %w", ms.Name, err)
		}
		if _, err := traffic.New(append([]traffic.Target(nil), targets...)); err != nil {
			return fmt.Errorf("ModelService %q: spec.%w", ms.Name, err)
		}
		pl.targets = targets
		// Keep what traffic names, the latest ready revision and anything
		// newer (still proving itself); retire the rest.
		ref := traffic.Referenced(targets)
		latestReady := view.latestReady()
		passed := false
		for _, r := range revs {
			if r.name == latestReady {
				passed = true
			}
			if ref[r.name] || r.name == latestReady || (passed && !r.ready) {
				pl.keep = append(pl.keep, r)
			} else if r != pl.newRev {
				pl.retire = append(pl.retire, r)
			}
		}
		plans = append(plans, pl)
	}
	inFile := map[string]bool{}
	var cfgs []activator.ServiceConfig
	for _, pl := range plans {
		ms := pl.ms
		inFile[ms.Namespace+"/"+ms.Name] = true
		var routing []v1alpha1.RoutingPlugin
		if ms.Spec.Routing != nil {
			routing = ms.Spec.Routing.Plugins
		}
		sc := activator.ServiceConfig{Namespace: ms.Namespace, Name: ms.Name, Model: ms.Spec.Model,
			LoRAAdapters: ms.Spec.LoRAAdapters, Traffic: pl.targets, Routing: routing}
		for _, r := range pl.keep {
			tmpl := r.ms.Spec.Template
			sc.Revisions = append(sc.Revisions, activator.RevisionConfig{Name: r.name,
				ContainerConcurrency: tmpl.ContainerConcurrency, Timeout: time.Duration(tmpl.TimeoutSeconds) * time.Second,
				Disaggregated: tmpl.Roles != nil, Tokenizer: engine.Resolve(tmpl.Engine).RoutingTokenizer()})
		}
		cfgs = append(cfgs, sc)
	}
	if err := p.act.SetServices(cfgs); err != nil {
		return err
	}

	// The queue-proxies of every revision load the service's adapters as
	// they are now.
	for _, pl := range plans {
		if err := p.writeLoRAFile(pl.ms); err != nil {
			return err
		}
	}
	// The activator knows the new revisions: start them; stop the retired.
	for _, pl := range plans {
		id := pl.ms.Namespace + "/" + pl.ms.Name
		if pl.newRev != nil {
			first := pl.newRev.gen == 1
			if err := p.startRevision(pl.newRev, first); err != nil {
				return err
			}
			pl.st.revisions = append(pl.st.revisions, pl.newRev)
			if !first {
				p.log.Info("new revision", slog.String("service", pl.ms.Name), slog.String("revision", pl.newRev.name))
			}
		}
		for _, r := range pl.retire {
			p.log.Info("revision retired: no traffic names it", slog.String("service", pl.ms.Name), slog.String("revision", r.name))
			for _, rs := range r.roles {
				p.stopRole(rs)
			}
		}
		pl.st.revisions = pl.keep
		if pl.newRev != nil && !contains(pl.keep, pl.newRev) {
			pl.st.revisions = append(pl.st.revisions, pl.newRev)
		}
		pl.st.ms = pl.ms
		p.services[id] = pl.st
	}
	for id, st := range p.services {
		if inFile[id] {
			continue
		}
		p.log.Info("service removed from the file", slog.String("service", st.ms.Name))
		for _, r := range st.revisions {
			for _, rs := range r.roles {
				p.stopRole(rs)
			}
		}
		delete(p.services, id)
	}
	p.applied = svcs
	return nil
}

func contains(rs []*localRevision, r *localRevision) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
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

// revisionReady is called (under the runtime's lock: it must not block)
// when a revision has a ready replica; the first time, traffic is
// reconsidered.
func (p *Platform) revisionReady(r *localRevision) {
	go func() {
		p.svcMu.Lock()
		defer p.svcMu.Unlock()
		if r.ready || p.ctx.Err() != nil {
			return
		}
		r.ready = true
		p.log.Info("revision ready", slog.String("revision", r.name))
		if err := p.reconcileLocked(p.applied); err != nil {
			p.log.Error("moving traffic to a ready revision failed", slog.String("revision", r.name), slog.Any("error", err))
		}
	}()
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
		svcs, err := LoadFile(p.opts.File)
		if err == nil {
			err = p.reconcile(svcs)
		}
		if err != nil {
			p.log.Error("the changed file was not applied; the running configuration stays", slog.String("file", p.opts.File), slog.Any("error", err))
			continue
		}
		p.log.Info("applied the changed file", slog.String("file", p.opts.File))
	}
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
