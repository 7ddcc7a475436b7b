package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// Options of `kvasir local`.
type Options struct {
	// File holds the ModelService documents.
	File string
	// Addr is where the OpenAI API and /healthz listen.
	Addr string
	// AdminAddr is where the operator endpoints listen: /metrics,
	// /kvasir/replicas, /healthz and pprof. Empty: not served.
	AdminAddr string
	// Limits harden the public listener (timeouts, connections, the
	// memory budget of request bodies); zero: httpserver.DefaultLimits.
	Limits httpserver.Limits
	// Self is the argv prefix that runs this binary (for `sim` and
	// `queue-proxy` subcommands), normally {os.Executable()}.
	Self []string
	// LogDir receives the replicas' logs; default a new temp dir.
	LogDir string
	// Activator configures the data plane.
	Activator activator.Config
	// Activators is how many activator replicas serve, each with its own
	// scheduling state (default 1). Requests are spread over them one at a
	// time, like activator pods behind a Service.
	Activators int
	// ScaleInterval is the scaler's tick. Default 1s.
	ScaleInterval time.Duration
	// Logger for everything.
	Logger *slog.Logger
	// DrainTimeout bounds, on stop, the wait for in-flight requests and
	// streams (default 30s: a laptop's Ctrl-C should not wait long).
	DrainTimeout time.Duration
	// OnListen is called with the bound address once serving (tests).
	OnListen func(addr string)
	// OnAdminListen is called with the admin listener's bound address once
	// serving (tests).
	OnAdminListen func(addr string)
	// WatchInterval is how often the file is checked for changes (default
	// 1s; negative: never).
	WatchInterval time.Duration
	// RequireAuth refuses to start, or to apply a file change, without a
	// Tenant: an API open to anyone who can reach it.
	RequireAuth bool
	// LookupEnv reads kvasir local's environment, where Tenants' fromEnv
	// keys are (default os.LookupEnv).
	LookupEnv func(string) (string, bool)
	// Accelerators is the machine's inventory, e.g.
	// "nvidia.com/gpu=4,huawei.com/ascend-910b=8"; empty: accelerators in
	// templates are not counted.
	Accelerators string
	// RateLimitRedis is host:port of the Redis holding the tenants' rate
	// limit counters; empty: one in-memory store, shared by the
	// activators of this process (so a limit holds across them).
	RateLimitRedis string
	// RateLimitFail is what the rate limiter does when Redis fails or
	// times out (default ratelimit.FailOpen).
	RateLimitFail ratelimit.FailMode
}

// revisionState is one running revision role.
type revisionState struct {
	svc     *v1alpha1.ModelService
	key     fleet.Key
	unwatch func()

	mu    sync.Mutex
	ready map[string]int // ready replicas per accelerator variant
}

// readyReplicas returns the ready replicas in all and per variant.
func (rs *revisionState) readyReplicas() (int, map[string]int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	n := 0
	for _, c := range rs.ready {
		n += c
	}
	return n, maps.Clone(rs.ready)
}

// Platform is a running local platform.
type Platform struct {
	opts    Options
	ctx     context.Context // lives as long as the platform serves
	log     *slog.Logger
	act     *activators
	devices *devices // nil without an accelerator inventory
	runtime *process.Runtime
	scaler  *scaler
	reg     *prometheus.Registry
	// closeLimiter releases the rate limiter's Redis client.
	closeLimiter func() error

	mu   sync.Mutex
	revs []*revisionState

	// The services and their revisions; guarded by svcMu, which reconcile
	// holds throughout.
	svcMu    sync.Mutex
	services map[string]*serviceState
	applied  []*v1alpha1.ModelService // the documents last applied

	// ready carries revisions that became ready from the runtime's
	// callbacks to the goroutine of runReadyLoop.
	ready *readyQueue
}

// Run starts the platform and serves until ctx is cancelled, then stops
// accepting, lets in-flight requests finish, and stops every replica.
func Run(ctx context.Context, opts Options) error {
	if err := opts.setDefaults(); err != nil {
		return err
	}
	cfg, err := loadConfig(opts)
	if err != nil {
		return err
	}
	if opts.LogDir == "" {
		dir, err := os.MkdirTemp("", "kvasir-local-")
		if err != nil {
			return fmt.Errorf("log dir: %w", err)
		}
		opts.LogDir = dir
	}
	pctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	p, err := newPlatform(pctx, opts)
	if err != nil {
		return err
	}
	defer p.close()
	stopReady := p.runReadyLoop()
	defer stopReady()
	if err := p.apply(cfg); err != nil {
		return err
	}
	return p.serve(ctx, len(cfg.services))
}

// setDefaults fills the options' unset fields and checks them.
func (o *Options) setDefaults() error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ScaleInterval == 0 {
		o.ScaleInterval = time.Second
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.Limits == (httpserver.Limits{}) {
		o.Limits = httpserver.DefaultLimits()
	}
	if err := o.Limits.Validate(); err != nil {
		return err
	}
	if len(o.Self) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("locating own binary: %w", err)
		}
		o.Self = []string{exe}
	}
	if o.Activators == 0 {
		o.Activators = 1
	}
	if o.Activators < 0 {
		return fmt.Errorf("activators: must be >= 1, got %d", o.Activators)
	}
	if o.RateLimitFail == "" {
		o.RateLimitFail = ratelimit.FailOpen
	}
	if _, err := ratelimit.ParseFailMode(string(o.RateLimitFail)); err != nil {
		return fmt.Errorf("ratelimit-fail: %w", err)
	}
	return nil
}

// newPlatform builds the platform's parts: the process runtime, the
// activators and the scaler; close releases them.
func newPlatform(ctx context.Context, opts Options) (*Platform, error) {
	p := &Platform{opts: opts, ctx: ctx, log: opts.Logger, reg: prometheus.NewRegistry(),
		services: map[string]*serviceState{}, ready: newReadyQueue()}
	p.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var inv *autoscaler.Inventory
	pcfg := process.Config{QueueProxy: append(append([]string(nil), opts.Self...), "queue-proxy"), LogDir: opts.LogDir}
	if opts.Accelerators != "" {
		var err error
		if inv, err = autoscaler.ParseInventory(opts.Accelerators); err != nil {
			return nil, fmt.Errorf("accelerators: %w", err)
		}
		p.devices = &devices{inv: inv, variants: map[fleet.Key][]autoscaler.Variant{}}
		pcfg.Devices = p.devices
	}
	rt, err := process.New(pcfg, opts.Logger)
	if err != nil {
		return nil, err
	}
	p.runtime = rt
	budget := httpserver.NewBudget(opts.Limits.BodyBudget) // one process, one budget for its activators
	// One rate limiter for every activator: one memory store, or one Redis
	// client, so that a tenant's limit holds across them.
	limiter, closeLimiter, err := activator.NewRateLimiter(opts.RateLimitRedis, opts.RateLimitFail, p.reg, opts.Logger)
	if err != nil {
		rt.Close()
		return nil, fmt.Errorf("ratelimit-redis: %w", err)
	}
	act, err := newActivators(opts.Activators, opts.Activator, p.reg, activator.WithLogger(opts.Logger),
		activator.WithLimits(opts.Limits, budget),
		activator.WithRateLimiter(limiter),
		activator.WithOnDemand(func(k fleet.Key) { p.scaler.poke(k) }))
	if err != nil {
		_ = closeLimiter()
		rt.Close()
		return nil, err
	}
	p.act, p.closeLimiter = act, closeLimiter
	p.scaler = newScaler(opts.Logger, act, rt, opts.ScaleInterval, inv)
	p.reg.MustRegister(&replicaCollector{p: p})
	return p, nil
}

// close stops the activators, then every replica.
func (p *Platform) close() {
	p.act.Close()
	_ = p.closeLimiter()
	p.runtime.Close()
}

// serve serves the public and admin listeners, scales and follows the file
// until ctx ends, then drains.
func (p *Platform) serve(ctx context.Context, services int) error {
	opts := p.opts
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", opts.Addr, err)
	}
	srv := httpserver.NewFast(p.Handler(), opts.Limits, p.log)
	adminAddr, closeAdmin, err := p.serveAdmin()
	if err != nil {
		ln.Close()
		return err
	}
	defer closeAdmin()
	sctx, stopScaler := context.WithCancel(ctx)
	defer stopScaler()
	go p.scaler.run(sctx)
	go p.watch(sctx)
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }() // FastServer caps the connections itself
	p.log.Info("kvasir local is serving", slog.String("addr", ln.Addr().String()), slog.String("admin", adminAddr),
		slog.String("file", opts.File), slog.Int("services", services), slog.String("logs", opts.LogDir))
	if opts.OnListen != nil {
		opts.OnListen(ln.Addr().String())
	}
	if opts.OnAdminListen != nil && adminAddr != "" {
		opts.OnAdminListen(adminAddr)
	}
	select {
	case err := <-errCh:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	p.shutdown(srv)
	stopScaler()
	p.log.Info("stopping replicas")
	return nil
}

// serveAdmin serves the operator endpoints on opts.AdminAddr, if set; it
// returns the bound address ("" when not served) and what stops them.
func (p *Platform) serveAdmin() (addr string, stop func(), err error) {
	if p.opts.AdminAddr == "" {
		return "", func() {}, nil
	}
	aln, err := net.Listen("tcp", p.opts.AdminAddr)
	if err != nil {
		return "", nil, fmt.Errorf("listen admin-addr %s: %w", p.opts.AdminAddr, err)
	}
	asrv := httpserver.New(p.AdminHandler(), p.opts.Limits, p.log)
	go func() { _ = httpserver.ServeAdmin(asrv, aln) }()
	return aln.Addr().String(), func() { asrv.Close() }, nil
}

// shutdown stops accepting and lets in-flight requests and streams finish,
// for at most opts.DrainTimeout (default 30s).
func (p *Platform) shutdown(srv *httpserver.FastServer) {
	p.log.Info("shutting down: finishing in-flight requests")
	drainTimeout := p.opts.DrainTimeout
	if drainTimeout <= 0 {
		drainTimeout = 30 * time.Second
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		p.log.Warn("shutdown", slog.Any("error", err))
	}
}

// startRole runs one replica set of a revision: its role's scaling, and
// roleArgs after the engine's own arguments.
func (p *Platform) startRole(ms *v1alpha1.ModelService, key fleet.Key, sc v1alpha1.ScalingSpec, roleArgs []string,
	minInitial int, onReady func()) (*revisionState, error) {
	argv, env, groups, err := roleLaunch(ms, p.opts.Self, key.Role, roleArgs, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	tmpl := ms.Spec.Template
	qpArgs := []string{"--container-concurrency", strconv.Itoa(tmpl.ContainerConcurrency),
		"--request-timeout", (time.Duration(tmpl.TimeoutSeconds) * time.Second).String()}
	loraFile := ""
	if len(ms.Spec.LoRAAdapters) > 0 { // the engines run with LoRA enabled
		loraFile = p.loraFile(ms)
	}
	qpArgs = append(qpArgs, engine.QueueProxyArgs(tmpl.Engine, engine.KVEventsPortVar, loraFile)...)
	p.runtime.Add(process.Spec{Key: key, Engine: argv, Env: env, QueueProxyArgs: qpArgs, Groups: groups,
		EngineHealthPath: engine.Resolve(tmpl.Engine).HealthPath})
	rs := &revisionState{svc: ms, key: key}
	rs.unwatch = p.runtime.Watch(key, func(eps []fleet.Endpoint) {
		ready := map[string]int{}
		for _, ep := range eps {
			ready[ep.Variant]++
		}
		rs.mu.Lock()
		rs.ready = ready
		rs.mu.Unlock()
		p.act.SetEndpoints(key, eps)
		if len(eps) > 0 && onReady != nil {
			onReady()
		}
	})
	initial := autoscaler.InitialScale(sc, minInitial)
	cfg := autoscaler.ConfigOf(sc, initial)
	decider, err := autoscaler.NewDecider(cfg, time.Now())
	if err != nil {
		return nil, fmt.Errorf("ModelService %q: spec.template.scaling: %w", ms.Name, err)
	}
	decider.Decide(time.Now(), 0, 0, 0) // the initial-scale decision, taken here
	t := newScaleTarget(key, decider, autoscaler.RoleVariantsOf(&ms.Spec.Template, key.Role))
	if key.Role == fleet.RolePrefill {
		t.role.Ratio = autoscaler.RatioOf(ms.Spec.Template.Roles)
	}
	if p.devices != nil {
		p.devices.setVariants(key, t.variants)
	}
	counts, placed := p.scaler.place(t, initial)
	if err := p.runtime.ScaleVariants(context.Background(), key, counts); err != nil {
		return nil, err
	}
	t.counts, t.role.Placed = counts, placed.Total()
	p.scaler.add(t)
	p.mu.Lock()
	p.revs = append(p.revs, rs)
	p.mu.Unlock()
	return rs, nil
}

// stopRole stops a replica set: the scaler forgets it, its replicas drain
// and stop, and it leaves the metrics and /kvasir/replicas.
func (p *Platform) stopRole(rs *revisionState) {
	p.scaler.remove(rs.key)
	if rs.unwatch != nil {
		rs.unwatch()
	}
	p.runtime.Remove(rs.key)
	p.mu.Lock()
	for i, x := range p.revs {
		if x == rs {
			p.revs = append(p.revs[:i], p.revs[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
}

// engineCommand returns the argv and extra environment of a revision's
// engine, or of one process of a serving group (group; nil without
// parallelism): pkg/engine builds the command line, as for Kubernetes. The
// template's valueFrom variables are read from kvasir local's own
// environment, through lookup (see LocalEnvName).
func engineCommand(ms *v1alpha1.ModelService, self []string, role string, roleArgs []string,
	lookup func(string) (string, bool), group *engine.Group) ([]string, []string, error) {
	e := ms.Spec.Template.Engine
	if e.Type == v1alpha1.EngineCustom && len(e.Command) == 0 {
		return nil, nil, fmt.Errorf("ModelService %q: spec.template.engine.command: required for engine type %q in local mode", ms.Name, e.Type)
	}
	// A command in local mode replaces the engine's own (a vLLM in a
	// virtualenv, say), inside whatever wrapper a group needs (Ray's head
	// start); the platform's arguments still follow.
	spec := engine.Spec{Engine: e, Model: ms.Spec.Model, LoRAAdapters: ms.Spec.LoRAAdapters, Role: role, RoleArgs: roleArgs,
		Port: engine.PortVar, KVEventsPort: engine.KVEventsPortVar, SimCommand: append(append([]string(nil), self...), "sim"), Group: group}
	switch {
	case len(e.Command) == 0:
	case e.Type == v1alpha1.EngineSim:
		spec.SimCommand = e.Command
	case e.Type != v1alpha1.EngineCustom:
		spec.EngineCommand = e.Command
	}
	launch, err := engine.Build(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("ModelService %q: %w", ms.Name, err)
	}
	var env []string
	set := map[string]bool{}
	refs := map[string]string{} // variable -> the reference it stands for
	for i, v := range e.Env {
		value := v.Value
		if v.ValueFrom != nil {
			name, optional, err := LocalEnvName(v.ValueFrom)
			if err != nil {
				return nil, nil, fmt.Errorf("ModelService %q: spec.template.engine.env[%d].valueFrom: %w", ms.Name, i, err)
			}
			ref := refString(v.ValueFrom)
			if other, ok := refs[name]; ok && other != ref {
				return nil, nil, fmt.Errorf("ModelService %q: spec.template.engine.env[%d].valueFrom: %s and %s both read %s in local mode; rename one",
					ms.Name, i, other, ref, name)
			}
			refs[name] = ref
			var ok bool
			if value, ok = lookup(name); !ok {
				if optional {
					continue
				}
				return nil, nil, fmt.Errorf("ModelService %q: spec.template.engine.env[%d].valueFrom: set %s in kvasir local's environment", ms.Name, i, name)
			}
		}
		env = append(env, v.Name+"="+value)
		set[v.Name] = true
	}
	for _, v := range launch.Env {
		if !set[v.Name] {
			env = append(env, v.Name+"="+v.Value)
		}
	}
	return launch.Argv(), env, nil
}

// LocalEnvName is the variable of kvasir local's environment that stands
// for a secret or config map key in local mode:
// KVASIR_SECRET_<NAME>_<KEY> and KVASIR_CONFIGMAP_<NAME>_<KEY>, upper
// case, every character but letters and digits as "_" (secret hf-token,
// key token: KVASIR_SECRET_HF_TOKEN_TOKEN). It also says whether the
// reference is optional. Field and resource references have no local
// meaning and are refused.
func LocalEnvName(src *corev1.EnvVarSource) (name string, optional bool, err error) {
	switch {
	case src.SecretKeyRef != nil:
		return envName("KVASIR_SECRET", src.SecretKeyRef.Name, src.SecretKeyRef.Key), ptr.Deref(src.SecretKeyRef.Optional, false), nil
	case src.ConfigMapKeyRef != nil:
		return envName("KVASIR_CONFIGMAP", src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key), ptr.Deref(src.ConfigMapKeyRef.Optional, false), nil
	default:
		return "", false, errors.New("only secretKeyRef and configMapKeyRef have a meaning in local mode")
	}
}

// refString names a secret or config map key for messages.
func refString(src *corev1.EnvVarSource) string {
	if src.SecretKeyRef != nil {
		return "secret " + src.SecretKeyRef.Name + " key " + src.SecretKeyRef.Key
	}
	return "configmap " + src.ConfigMapKeyRef.Name + " key " + src.ConfigMapKeyRef.Key
}

func envName(prefix string, parts ...string) string {
	var b strings.Builder
	b.WriteString(prefix)
	for _, p := range parts {
		b.WriteByte('_')
		for _, r := range p {
			switch {
			case r >= 'a' && r <= 'z':
				b.WriteRune(r - 'a' + 'A')
			case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
				b.WriteRune(r)
			default:
				b.WriteByte('_')
			}
		}
	}
	return b.String()
}

// Handler serves the public listener (with httpserver.FastServer): the
// OpenAI API under /v1/ and /healthz.
func (p *Platform) Handler() fasthttp.RequestHandler {
	api := p.act.Handler()
	return func(ctx *fasthttp.RequestCtx) {
		path := ctx.Path()
		switch {
		case bytes.HasPrefix(path, []byte("/v1/")):
			api(ctx)
		case string(path) == "/healthz" && (ctx.IsGet() || ctx.IsHead()):
			ctx.SetContentType("text/plain")
			ctx.SetBodyString("ok\n")
		default:
			ctx.SetContentType("text/plain; charset=utf-8")
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetBodyString("404 page not found\n")
		}
	}
}

// AdminHandler serves the operator endpoints: /metrics, /kvasir/replicas
// (process ids and internal addresses), /healthz and pprof.
func (p *Platform) AdminHandler() http.Handler {
	mux := httpserver.AdminMux(promhttp.HandlerFor(p.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /kvasir/replicas", p.serveReplicas)
	return mux
}

// RevisionStatus is one revision in /kvasir/replicas.
type RevisionStatus struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Model     string `json:"model"`
	Revision  string `json:"revision"`
	Role      string `json:"role"`
	Desired   int    `json:"desired"`
	Ready     int    `json:"ready"`
	// Variants splits Desired and Ready by accelerator variant (absent
	// without variants).
	Variants    []VariantStatus `json:"variants,omitempty"`
	Unplaceable int             `json:"unplaceable,omitempty"`
	// Groups describes the serving groups of a role whose replicas span
	// several processes (absent otherwise).
	Groups   *GroupsStatus   `json:"groups,omitempty"`
	Replicas []ReplicaStatus `json:"replicas"`
}

// VariantStatus is one accelerator variant of a revision role.
type VariantStatus struct {
	Name    string `json:"name"`
	Desired int    `json:"desired"`
	Ready   int    `json:"ready"`
}

// ReplicaStatus is a replica and the last stats its queue-proxy reported.
type ReplicaStatus struct {
	process.ReplicaInfo
	Stats *stats.Stat `json:"stats,omitempty"`
	// PrefixIndex is what the activator's prefix index holds for the
	// replica (absent before it is ready).
	PrefixIndex *kvindex.PodInfo `json:"prefixIndex,omitempty"`
}

func (p *Platform) serveReplicas(w http.ResponseWriter, _ *http.Request) {
	p.mu.Lock()
	revs := append([]*revisionState(nil), p.revs...)
	p.mu.Unlock()
	out := make([]RevisionStatus, 0, len(revs))
	for _, rs := range revs {
		infos := p.runtime.Replicas(rs.key)
		replicas := make([]ReplicaStatus, 0, len(infos))
		for _, info := range infos {
			replicas = append(replicas, ReplicaStatus{ReplicaInfo: info, Stats: p.act.PodStat(rs.key, info.Name),
				PrefixIndex: p.prefixInfo(rs.key, info.Name)})
		}
		ready, readyBy := rs.readyReplicas()
		st := RevisionStatus{Namespace: rs.key.Namespace, Service: rs.key.Service, Model: rs.svc.Spec.Model, Revision: rs.key.Revision,
			Role: rs.key.RoleLabel(), Desired: p.runtime.Desired(rs.key), Ready: ready,
			Unplaceable: p.scaler.unplaceable(rs.key), Replicas: replicas}
		st.Groups = groupsStatus(autoscaler.RoleVariantsOf(&rs.svc.Spec.Template, rs.key.Role), st.Desired, ready, infos)
		desiredBy := p.runtime.DesiredVariants(rs.key)
		for _, v := range rs.svc.Spec.Template.AcceleratorsByCost() {
			st.Variants = append(st.Variants, VariantStatus{Name: v.Name, Desired: desiredBy[v.Name], Ready: readyBy[v.Name]})
		}
		out = append(out, st)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

var (
	desiredDesc = prometheus.NewDesc("kvasir_revision_desired_replicas",
		"Replicas the autoscaler wants for a revision role, per accelerator variant (variant empty without variants).",
		[]string{"namespace", "service", "revision", "role", "variant"}, nil)
	readyDesc = prometheus.NewDesc("kvasir_revision_ready_replicas",
		"Ready replicas of a revision role, per accelerator variant (variant empty without variants).",
		[]string{"namespace", "service", "revision", "role", "variant"}, nil)
	unplaceableDesc = prometheus.NewDesc("kvasir_revision_unplaceable_replicas",
		"Replicas the autoscaler wants for a revision role beyond what the accelerator inventory holds.",
		[]string{"namespace", "service", "revision", "role"}, nil)
)

// replicaCollector reports desired and ready replicas of every revision from
// the moment it exists.
type replicaCollector struct{ p *Platform }

func (c *replicaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- desiredDesc
	ch <- readyDesc
	ch <- unplaceableDesc
}

func (c *replicaCollector) Collect(ch chan<- prometheus.Metric) {
	c.p.mu.Lock()
	revs := append([]*revisionState(nil), c.p.revs...)
	c.p.mu.Unlock()
	for _, rs := range revs {
		role := rs.key.RoleLabel()
		desired := c.p.runtime.DesiredVariants(rs.key)
		_, ready := rs.readyReplicas()
		variants := []string{""}
		if vs := rs.svc.Spec.Template.AcceleratorsByCost(); len(vs) > 0 {
			variants = variants[:0]
			for _, v := range vs {
				variants = append(variants, v.Name)
			}
		}
		for _, v := range variants {
			ch <- prometheus.MustNewConstMetric(desiredDesc, prometheus.GaugeValue, float64(desired[v]), rs.key.Namespace, rs.key.Service, rs.key.Revision, role, v)
			ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, float64(ready[v]), rs.key.Namespace, rs.key.Service, rs.key.Revision, role, v)
		}
		ch <- prometheus.MustNewConstMetric(unplaceableDesc, prometheus.GaugeValue, float64(c.p.scaler.unplaceable(rs.key)), rs.key.Namespace, rs.key.Service, rs.key.Revision, role)
	}
}

func (p *Platform) prefixInfo(key fleet.Key, pod string) *kvindex.PodInfo {
	if ix := p.act.Index(key); ix != nil {
		if info, ok := ix.Pod(pod); ok {
			return &info
		}
	}
	return nil
}
