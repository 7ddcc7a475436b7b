package process

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// Spec says how to run the replicas of one replica set.
type Spec struct {
	Key fleet.Key
	// Engine is the engine's argv; "$(PORT)" in any element expands to the
	// engine's port and "$(KV_EVENTS_PORT)" to a second free port, reserved
	// for its KV-cache events. PORT and KV_EVENTS_PORT are also set in its
	// environment.
	Engine []string
	// Env is added to the engine's environment (KEY=VALUE).
	Env []string
	// QueueProxyArgs are extra flags for the queue-proxy; "$(KV_EVENTS_PORT)"
	// expands as in Engine.
	QueueProxyArgs []string
	// Groups, per accelerator variant ("" without variants), makes each
	// replica of that variant a serving group: one engine process per
	// element, rank 0 (the leader, beside the queue-proxy) first, replacing
	// Engine and Env. Each process gets its own $(PORT) and
	// $(KV_EVENTS_PORT), and its share of the replica's devices;
	// "$(GROUP_PORT)" in any process's argv or environment expands to one
	// free loopback port per replica, the leader's group port. A variant
	// left out, or given fewer than two processes, runs one engine.
	Groups map[string][]Process
	// EngineHealthPath is the engine's readiness path. When set, a group
	// whose leader is not ready yet has the leader engine's own answer
	// there (an OpenAI-shaped error's message) as its reason in
	// ReplicaInfo.
	EngineHealthPath string
}

// Process is one engine process of a serving group.
type Process struct {
	// Argv and Env are as Spec.Engine and Spec.Env.
	Argv []string
	Env  []string
}

// GroupPortVar is the placeholder of a group's port in Process.Argv and
// Process.Env.
const GroupPortVar = "$(GROUP_PORT)"

// Config of the runtime.
type Config struct {
	// QueueProxy is the argv prefix that runs a queue-proxy
	// (e.g. {"/path/kvasir", "queue-proxy"}); the runtime appends its flags.
	QueueProxy []string
	// LogDir receives one log file per process.
	LogDir string
	// ProbeInterval is the readiness probe period of a starting replica. Default 10ms.
	ProbeInterval time.Duration
	// HealthInterval is the probe period of a ready replica. Default 1s.
	HealthInterval time.Duration
	// StartTimeout bounds how long a replica may take to become ready. Default 10m.
	StartTimeout time.Duration
	// StopTimeout bounds a replica's drain before it is killed. Default 30s.
	StopTimeout time.Duration
	// Devices, when set, hands accelerator devices to each replica before it
	// starts (their indices reach the engine in its environment) and takes
	// them back when it is gone.
	Devices Devices
}

// Devices allocates accelerator devices to replicas.
type Devices interface {
	// Allocate reserves the devices of a replica of key on an accelerator
	// variant ("" without variants) whose engine runs as procs processes
	// (a serving group's, or 1), all of them or none, and returns for each
	// process, in rank order, the environment that tells it which devices
	// are its share (nil: no devices).
	Allocate(key fleet.Key, variant, replica string, procs int) (env [][]string, err error)
	// Release frees a replica's devices.
	Release(replica string)
}

func (c *Config) setDefaults() {
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 10 * time.Millisecond
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = time.Second
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 10 * time.Minute
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 30 * time.Second
	}
}

// Runtime runs replica sets as local processes. Create it with New.
type Runtime struct {
	cfg  Config
	log  *slog.Logger
	ctx  context.Context // lives until Close
	stop context.CancelFunc
	http *http.Client
	wg   sync.WaitGroup // the replicas' goroutines

	// watches counts the watches' goroutines; they end when their watch
	// stops, or after replicasDone is closed, once they have delivered the
	// last change.
	watches      sync.WaitGroup
	replicasDone chan struct{} // closed by Close once every replica is gone

	mu     sync.Mutex
	sets   map[fleet.Key]*set
	seq    int
	closed bool // Close has stopped every replica: no watch goroutine starts
	// launches are replicas startLocked reserved, whose processes the
	// holder of mu starts once it has let go of it (unlock): fork, exec
	// and log files are never done under mu.
	launches []*launching
}

var (
	_ fleet.Runtime       = (*Runtime)(nil)
	_ fleet.VariantScaler = (*Runtime)(nil)
)

// New returns a runtime; Close stops every replica it started.
func New(cfg Config, log *slog.Logger) (*Runtime, error) {
	cfg.setDefaults()
	if len(cfg.QueueProxy) == 0 {
		return nil, errors.New("process runtime: QueueProxy command is required")
	}
	if cfg.LogDir == "" {
		return nil, errors.New("process runtime: LogDir is required")
	}
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("process runtime: log dir: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Runtime{
		cfg: cfg, log: log, ctx: ctx, stop: cancel, sets: map[fleet.Key]*set{}, replicasDone: make(chan struct{}),
		http: &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}, nil
}

// set is one replica set.
type set struct {
	spec     Spec
	desired  map[string]int // per accelerator variant ("" without variants)
	replicas []*replica
	watchers map[*watch]struct{}
	crashes  int // consecutive crashes, for back-off
	removed  bool
}

// Replica states.
const (
	stateStarting = "Starting"
	stateReady    = "Ready"
	stateUnready  = "NotReady"
	stateStopping = "Stopping"
)

type replica struct {
	name       string
	variant    string
	qpPort     int
	enginePort int
	engine     *exec.Cmd
	qp         *exec.Cmd
	engineDone chan struct{} // closed when the engine has exited
	qpDone     chan struct{} // closed when the queue-proxy has exited
	devices    []string      // the leader engine's device environment
	// workers are a serving group's ranks 1 to N-1 (nil: one engine).
	workers []*worker
	state   string
	reason  string // why a group is not ready ("" when it is)
	// healthURL is a group leader engine's readiness URL, asked for its
	// reason while it is not ready ("": not asked).
	healthURL string
	started   time.Time
	stopping  bool
	timedOut  bool          // stopped for not becoming ready in time
	done      chan struct{} // closed when every process has exited
}

// worker is one worker process of a serving group.
type worker struct {
	rank    int
	port    int
	cmd     *exec.Cmd
	devices []string
	done    chan struct{} // closed when it has exited
}

// grouped reports whether the replica is a serving group.
func (rp *replica) grouped() bool { return len(rp.workers) > 0 }

// ReplicaInfo describes a replica for status output and tests.
type ReplicaInfo struct {
	Name       string    `json:"name"`
	Variant    string    `json:"variant,omitempty"`
	State      string    `json:"state"`
	Address    string    `json:"address"`
	EngineAddr string    `json:"engineAddress"`
	EnginePID  int       `json:"enginePid"`
	ProxyPID   int       `json:"queueProxyPid"`
	Started    time.Time `json:"started"`
	// Devices is the environment naming the (leader) engine's devices.
	Devices []string `json:"devices,omitempty"`
	// Group describes a serving group's processes (nil: one engine).
	Group *GroupInfo `json:"group,omitempty"`
}

// GroupInfo is a serving group's part of a ReplicaInfo.
type GroupInfo struct {
	// Pods is the group's size: the leader and its workers.
	Pods int `json:"pods"`
	// Workers are ranks 1 to Pods-1.
	Workers []WorkerInfo `json:"workers"`
	// NotReady says why the group is not ready ("" when it is): the
	// leader engine's own reason where it gives one (the simulator:
	// "waiting for 1 of 1 workers to connect"), a process that exited, or
	// that it is stopping.
	NotReady string `json:"notReady,omitempty"`
}

// WorkerInfo is one worker process of a serving group.
type WorkerInfo struct {
	Rank int `json:"rank"`
	PID  int `json:"pid"`
	// Running is false once the process has exited.
	Running bool     `json:"running"`
	Devices []string `json:"devices,omitempty"`
}

// Add registers a replica set with zero replicas; Scale starts them.
func (r *Runtime) Add(spec Spec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.sets[spec.Key]; ok {
		s.spec = spec
		return
	}
	r.sets[spec.Key] = &set{spec: spec, desired: map[string]int{}, watchers: map[*watch]struct{}{}}
}

// Remove scales a replica set to zero and forgets it.
func (r *Runtime) Remove(key fleet.Key) {
	r.mu.Lock()
	s, ok := r.sets[key]
	if ok {
		s.removed = true
		clear(s.desired)
		delete(r.sets, key)
		r.reconcileLocked(s)
	}
	r.unlock()
}

// Scale implements fleet.Scaler for a replica set without accelerator
// variants.
func (r *Runtime) Scale(ctx context.Context, key fleet.Key, n int) error {
	return r.ScaleVariants(ctx, key, map[string]int{"": n})
}

// ScaleVariants implements fleet.VariantScaler: counts gives the replicas
// per accelerator variant; variants it leaves out go to zero.
func (r *Runtime) ScaleVariants(_ context.Context, key fleet.Key, counts map[string]int) error {
	for v, n := range counts {
		if n < 0 {
			return fmt.Errorf("scale %s: negative replicas %d for variant %q", key, n, v)
		}
	}
	r.mu.Lock()
	defer r.unlock()
	s, ok := r.sets[key]
	if !ok {
		return fleet.ErrUnknown{Key: key}
	}
	from := sum(s.desired)
	clear(s.desired)
	for v, n := range counts {
		if n > 0 {
			s.desired[v] = n
		}
	}
	if to := sum(s.desired); to != from {
		r.log.Info("scaling", slog.String("replicaSet", key.String()), slog.Int("from", from), slog.Int("to", to))
	}
	r.reconcileLocked(s)
	return nil
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Desired returns the desired replica count of a set.
func (r *Runtime) Desired(key fleet.Key) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.sets[key]; ok {
		return sum(s.desired)
	}
	return 0
}

// DesiredVariants returns the desired replicas of a set per variant.
func (r *Runtime) DesiredVariants(key fleet.Key) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.sets[key]; ok {
		return maps.Clone(s.desired)
	}
	return nil
}

// Watch implements fleet.Watcher, with its guarantees: fn is called from a
// goroutine the runtime owns, one per watch, outside every runtime lock,
// with the newest set. For a key the runtime does not know, fn is called
// once with no endpoints; after Close, once, before Watch returns.
func (r *Runtime) Watch(key fleet.Key, fn func([]fleet.Endpoint)) func() {
	w := newWatch(fn)
	r.mu.Lock()
	s := r.sets[key]
	var eps []fleet.Endpoint
	if s != nil {
		s.watchers[w] = struct{}{}
		eps = readyEndpoints(s)
	}
	if r.closed {
		r.mu.Unlock()
		fn(eps) // the runtime owns no goroutine any more
		return func() {}
	}
	w.post(eps)
	r.watches.Add(1) // under r.mu, before Close can wait
	r.mu.Unlock()
	go func() {
		defer r.watches.Done()
		w.run(r.replicasDone)
	}()
	return func() {
		if s != nil {
			r.mu.Lock()
			delete(s.watchers, w)
			r.mu.Unlock()
		}
		w.stop()
	}
}

// Replicas lists the replicas of a set.
func (r *Runtime) Replicas(key fleet.Key) []ReplicaInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.sets[key]
	if !ok {
		return nil
	}
	out := make([]ReplicaInfo, 0, len(s.replicas))
	for _, rp := range s.replicas {
		info := ReplicaInfo{Name: rp.name, Variant: rp.variant, State: rp.state, Started: rp.started,
			Address:    "127.0.0.1:" + strconv.Itoa(rp.qpPort),
			EngineAddr: "127.0.0.1:" + strconv.Itoa(rp.enginePort), Devices: slices.Clone(rp.devices)}
		if rp.engine != nil { // nil until started
			info.EnginePID = rp.engine.Process.Pid
		}
		if rp.qp != nil {
			info.ProxyPID = rp.qp.Process.Pid
		}
		if rp.grouped() {
			info.Group = rp.groupInfo()
		}
		out = append(out, info)
	}
	return out
}

// groupInfo describes a group's processes; the caller holds r.mu.
func (rp *replica) groupInfo() *GroupInfo {
	g := &GroupInfo{Pods: len(rp.workers) + 1, Workers: make([]WorkerInfo, 0, len(rp.workers))}
	for _, w := range rp.workers {
		wi := WorkerInfo{Rank: w.rank, Devices: slices.Clone(w.devices), Running: !isClosed(w.done)}
		if w.cmd != nil {
			wi.PID = w.cmd.Process.Pid
		}
		g.Workers = append(g.Workers, wi)
	}
	switch rp.state {
	case stateReady:
	case stateStopping:
		g.NotReady = cmp.Or(rp.reason, "stopping")
	default:
		g.NotReady = cmp.Or(rp.reason, "the leader is not ready")
	}
	return g
}

// isClosed reports whether ch is closed.
func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func readyEndpoints(s *set) []fleet.Endpoint {
	var eps []fleet.Endpoint
	for _, rp := range s.replicas {
		if rp.state == stateReady {
			eps = append(eps, fleet.Endpoint{Name: rp.name, Address: "127.0.0.1:" + strconv.Itoa(rp.qpPort), Variant: rp.variant})
		}
	}
	return eps
}

// notifyLocked hands the set's ready endpoints to its watches' goroutines;
// it calls no callback.
func (r *Runtime) notifyLocked(s *set) {
	eps := readyEndpoints(s)
	for w := range s.watchers {
		w.post(eps)
	}
}

// reconcileLocked starts or stops replicas toward the desired count.
func (r *Runtime) reconcileLocked(s *set) {
	if r.ctx.Err() != nil {
		return
	}
	live := map[string]int{}
	for _, rp := range s.replicas {
		if !rp.stopping {
			live[rp.variant]++
		}
	}
	variants := slices.Sorted(maps.Keys(live))
	for v := range s.desired {
		if _, ok := live[v]; !ok {
			variants = append(variants, v)
		}
	}
	for _, v := range variants {
		r.reconcileVariantLocked(s, v, live[v])
	}
}

// reconcileVariantLocked starts or stops the replicas of one variant.
func (r *Runtime) reconcileVariantLocked(s *set, variant string, live int) {
	for ; live < s.desired[variant]; live++ {
		if err := r.startLocked(s, variant); err != nil {
			r.log.Error("starting replica failed", slog.String("replicaSet", s.spec.Key.String()),
				slog.String("variant", variant), slog.Any("error", err))
			return
		}
	}
	if live > s.desired[variant] {
		// Stop not-ready replicas first, then the newest.
		cands := make([]*replica, 0, len(s.replicas))
		for _, rp := range s.replicas {
			if !rp.stopping && rp.variant == variant {
				cands = append(cands, rp)
			}
		}
		sort.SliceStable(cands, func(i, j int) bool {
			ri, rj := cands[i].state == stateReady, cands[j].state == stateReady
			if ri != rj {
				return !ri
			}
			return cands[i].started.After(cands[j].started)
		})
		for _, rp := range cands[:live-s.desired[variant]] {
			r.stopLocked(s, rp)
		}
	}
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// expand replaces "$(PORT)", "$(KV_EVENTS_PORT)" and, with a group port,
// "$(GROUP_PORT)" in args.
func expand(args []string, port, kvPort, groupPort int) []string {
	pairs := []string{"$(PORT)", strconv.Itoa(port), "$(KV_EVENTS_PORT)", strconv.Itoa(kvPort)}
	if groupPort > 0 {
		pairs = append(pairs, GroupPortVar, strconv.Itoa(groupPort))
	}
	r := strings.NewReplacer(pairs...)
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = r.Replace(a)
	}
	return out
}

// launching is a replica reserved under mu whose processes are not started
// yet: the commands that are its until they run.
type launching struct {
	s       *set
	rp      *replica
	engines []*exec.Cmd // the leader's first
	qp      *exec.Cmd
}

// unlock lets go of mu and then starts the replicas reserved while it was
// held. Every path that may reconcile a set leaves mu through it.
func (r *Runtime) unlock() {
	ls := r.launches
	r.launches = nil
	r.mu.Unlock()
	for _, l := range ls {
		r.start(l)
	}
}

// startLocked reserves one replica of variant: its ports, its devices and
// its place in the set (starting, with no process yet), and queues its
// launch for unlock.
func (r *Runtime) startLocked(s *set, variant string) error {
	procs := s.spec.processes(variant)
	ports, err := freePorts(len(procs))
	if err != nil {
		return err
	}
	name := r.replicaNameLocked(s.spec.Key)
	devEnv := make([][]string, len(procs))
	if r.cfg.Devices != nil {
		env, err := r.cfg.Devices.Allocate(s.spec.Key, variant, name, len(procs))
		if err != nil {
			return fmt.Errorf("accelerators for %s: %w", name, err)
		}
		if env != nil && len(env) != len(procs) {
			r.cfg.Devices.Release(name)
			return fmt.Errorf("accelerators for %s: %d device sets for %d processes", name, len(env), len(procs))
		}
		copy(devEnv, env)
	}
	cmds, qp := r.commands(s.spec, name, procs, ports, devEnv)
	rp := &replica{name: name, variant: variant, qpPort: ports.queueProxy, enginePort: ports.engines[0].engine,
		engineDone: make(chan struct{}), qpDone: make(chan struct{}), devices: devEnv[0],
		state: stateStarting, started: time.Now(), done: make(chan struct{})}
	if len(cmds) > 1 && s.spec.EngineHealthPath != "" {
		rp.healthURL = "http://127.0.0.1:" + strconv.Itoa(rp.enginePort) + "/" + strings.TrimPrefix(s.spec.EngineHealthPath, "/")
	}
	for i := range cmds[1:] {
		rp.workers = append(rp.workers, &worker{rank: i + 1, port: ports.engines[i+1].engine, devices: devEnv[i+1],
			done: make(chan struct{})})
	}
	s.replicas = append(s.replicas, rp)
	attrs := []any{slog.String("replica", name), slog.Int("queueProxyPort", ports.queueProxy),
		slog.Int("enginePort", ports.engines[0].engine), slog.String("logs", r.cfg.LogDir)}
	if rp.grouped() {
		attrs = append(attrs, slog.Int("groupSize", len(procs)), slog.Int("groupPort", ports.group))
	}
	r.log.Info("replica starting", attrs...)
	r.wg.Add(1) // Close waits for the launch too
	r.launches = append(r.launches, &launching{s: s, rp: rp, engines: cmds, qp: qp})
	return nil
}

// start runs a reserved replica's processes, without mu, and then, with
// it, makes them the replica's and hands the replica to its supervisor. A
// replica that cannot start is forgotten (its devices freed); one stopped
// meanwhile is started and then stopped, through its supervisor, as any.
func (r *Runtime) start(l *launching) {
	defer r.wg.Done()
	s, rp := l.s, l.rp
	logs, err := r.launch(rp.name, l.engines, l.qp)
	r.mu.Lock()
	if err != nil {
		r.log.Error("starting replica failed", slog.String("replicaSet", s.spec.Key.String()),
			slog.String("variant", rp.variant), slog.String("replica", rp.name), slog.Any("error", err))
		r.forgetLocked(s, rp)
		r.mu.Unlock()
		return
	}
	rp.engine, rp.qp = l.engines[0], l.qp
	for i, w := range rp.workers {
		w.cmd = l.engines[i+1]
	}
	stopped := rp.stopping
	r.mu.Unlock()
	if stopped {
		_ = l.qp.Process.Signal(syscall.SIGTERM) // stopLocked had no process to signal
	}

	exited := make(chan string, 2+len(rp.workers))
	r.wg.Add(3 + len(rp.workers))
	go func() { defer r.wg.Done(); waitLog(l.engines[0], logs[0], rp.engineDone); exited <- "engine" }()
	go func() { defer r.wg.Done(); waitLog(l.qp, logs[len(logs)-1], rp.qpDone); exited <- "queue-proxy" }()
	for i, w := range rp.workers {
		go func() {
			defer r.wg.Done()
			waitLog(l.engines[i+1], logs[i+1], w.done)
			exited <- "worker rank " + strconv.Itoa(w.rank)
		}()
	}
	go func() { defer r.wg.Done(); r.supervise(s, rp, exited) }()
}

// processes are the engine processes of a replica of variant: its group's,
// or the one engine of Engine and Env.
func (spec Spec) processes(variant string) []Process {
	if g := spec.Groups[variant]; len(g) > 1 {
		return g
	}
	return []Process{{Argv: spec.Engine, Env: spec.Env}}
}

// replicaPorts are the loopback ports of one replica.
type replicaPorts struct {
	// engines are each engine process's ports, the leader's first.
	engines    []enginePorts
	queueProxy int
	group      int // a group's port (0 for one engine)
}

// enginePorts are one engine process's ports.
type enginePorts struct {
	engine, kvEvents int
}

// freePorts reserves the ports of a replica of procs engine processes.
func freePorts(procs int) (replicaPorts, error) {
	var p replicaPorts
	var err error
	for i := range procs {
		var e enginePorts
		if e.engine, err = freePort(); err != nil {
			return p, fmt.Errorf("engine port of rank %d: %w", i, err)
		}
		if e.kvEvents, err = freePort(); err != nil {
			return p, fmt.Errorf("KV events port of rank %d: %w", i, err)
		}
		p.engines = append(p.engines, e)
	}
	if p.queueProxy, err = freePort(); err != nil {
		return p, fmt.Errorf("queue-proxy port: %w", err)
	}
	if procs > 1 {
		if p.group, err = freePort(); err != nil {
			return p, fmt.Errorf("group port: %w", err)
		}
	}
	return p, nil
}

// replicaNameLocked names the next replica of a set: revision[-role]-seq.
func (r *Runtime) replicaNameLocked(key fleet.Key) string {
	r.seq++
	if key.Role != "" {
		return fmt.Sprintf("%s-%s-%d", key.Revision, key.Role, r.seq)
	}
	return key.Revision + "-" + strconv.Itoa(r.seq)
}

// commands builds a replica's engine commands (one per process, in rank
// order) and its queue-proxy's, which fronts the first.
func (r *Runtime) commands(spec Spec, name string, procs []Process, ports replicaPorts, devEnv [][]string) (engines []*exec.Cmd, qp *exec.Cmd) {
	for i, pr := range procs {
		ep := ports.engines[i]
		argv := expand(pr.Argv, ep.engine, ep.kvEvents, ports.group)
		c := exec.Command(argv[0], argv[1:]...)
		c.Env = append(inheritedEnv(), "PORT="+strconv.Itoa(ep.engine), "KV_EVENTS_PORT="+strconv.Itoa(ep.kvEvents))
		if ports.group > 0 {
			c.Env = append(c.Env, "GROUP_PORT="+strconv.Itoa(ports.group))
		}
		c.Env = append(append(c.Env, expand(pr.Env, ep.engine, ep.kvEvents, ports.group)...), devEnv[i]...)
		engines = append(engines, c)
	}
	leader := ports.engines[0]
	qpArgv := append(append([]string(nil), r.cfg.QueueProxy...),
		"--port", strconv.Itoa(ports.queueProxy),
		"--engine-url", "http://127.0.0.1:"+strconv.Itoa(leader.engine),
		"--pod-name", name)
	qpArgv = append(qpArgv, expand(spec.QueueProxyArgs, leader.engine, leader.kvEvents, 0)...)
	qp = exec.Command(qpArgv[0], qpArgv[1:]...)
	for _, c := range append(slices.Clone(engines), qp) {
		// Children die with us even when we are killed hard (on Linux), and
		// each leads its own process group, killed whole when it hangs.
		c.SysProcAttr = DieWithParent(&syscall.SysProcAttr{Setpgid: true})
	}
	return engines, qp
}

// launch starts a replica's engines (the leader first), then its
// queue-proxy, each writing to its own log file; it returns the logs in the
// same order, the queue-proxy's last, for the caller to close when each
// process has exited. On error nothing runs.
func (r *Runtime) launch(name string, engines []*exec.Cmd, qp *exec.Cmd) ([]*os.File, error) {
	cmds := append(slices.Clone(engines), qp)
	logs := make([]*os.File, 0, len(cmds))
	closeAll := func() {
		for _, f := range logs {
			f.Close()
		}
	}
	for i := range cmds {
		file := name + "-engine.log"
		switch {
		case i == len(cmds)-1:
			file = name + "-queue-proxy.log"
		case i > 0:
			file = name + "-rank" + strconv.Itoa(i) + ".log"
		}
		f, err := r.logFile(file)
		if err != nil {
			closeAll()
			return nil, err
		}
		logs = append(logs, f)
		cmds[i].Stdout, cmds[i].Stderr = f, f
	}
	for i, c := range cmds {
		if err := c.Start(); err != nil {
			for _, started := range cmds[:i] {
				_ = syscall.Kill(-started.Process.Pid, syscall.SIGKILL)
				_ = started.Wait()
			}
			closeAll()
			if c == qp {
				return nil, fmt.Errorf("start queue-proxy: %w", err)
			}
			return nil, fmt.Errorf("start engine %q (rank %d): %w", c.Args[0], i, err)
		}
	}
	return logs, nil
}

func (r *Runtime) logFile(name string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(r.cfg.LogDir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return f, nil
}

func waitLog(c *exec.Cmd, f io.Closer, done chan struct{}) {
	_ = c.Wait()
	f.Close()
	close(done)
}

// supervise probes a replica until ready, keeps checking its health, and
// handles the exit of either process: it ends the other, forgets the
// replica and, when the exit was a failure, replaces it.
//
// A serving group is supervised as one replica: it is ready when its
// leader's queue-proxy is (the leader engine is ready only once its workers
// have joined), and the exit of any of its processes ends them all and, when
// unexpected, replaces the whole group.
func (r *Runtime) supervise(s *set, rp *replica, exited <-chan string) {
	which := r.probeUntilExit(s, rp, exited)
	expected := r.markExited(s, rp, which)
	r.terminate(rp, !expected && rp.grouped())
	r.mu.Lock()
	defer r.unlock()
	r.forgetLocked(s, rp)
	if !expected && !s.removed {
		r.replaceLocked(s)
	}
}

// probeUntilExit probes the replica until one of its processes exits or the
// runtime shuts down, and says which ("engine", "queue-proxy", "shutdown").
func (r *Runtime) probeUntilExit(s *set, rp *replica, exited <-chan string) string {
	pr := prober{url: "http://127.0.0.1:" + strconv.Itoa(rp.qpPort) + "/kvasir/ready",
		deadline: time.Now().Add(r.cfg.StartTimeout)}
	timer := time.NewTimer(0)
	defer timer.Stop()
	var asked time.Time // when the leader engine was last asked why it is not ready
	for {
		select {
		case which := <-exited:
			return which
		case <-r.ctx.Done():
			return "shutdown"
		case <-timer.C:
			ok := r.probe(pr.url)
			reason := ""
			if !ok && rp.healthURL != "" && time.Since(asked) >= reasonInterval {
				asked = time.Now()
				reason = r.engineReason(rp.healthURL)
			}
			r.mu.Lock()
			if ok {
				rp.reason = ""
			} else if reason != "" {
				rp.reason = "leader: " + reason
			}
			r.observeLocked(s, rp, &pr, ok)
			interval := r.cfg.HealthInterval
			if rp.state == stateStarting {
				interval = r.cfg.ProbeInterval
			}
			r.mu.Unlock()
			timer.Reset(interval)
		}
	}
}

// reasonInterval is how often a group leader engine that is not ready is
// asked why.
const reasonInterval = 200 * time.Millisecond

// maxReasonBytes bounds what is read of a leader engine's answer, and
// maxReasonRunes what is kept of its reason.
const (
	maxReasonBytes = 4096
	maxReasonRunes = 200
)

// engineReason asks a group's leader engine why it is not ready: the
// message of an OpenAI-shaped error at its readiness path, printable and
// bounded; "" when it gives none.
func (r *Runtime) engineReason(url string) string {
	resp, err := r.http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var body struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if resp.StatusCode == http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, maxReasonBytes)).Decode(&body) != nil {
		return ""
	}
	var b strings.Builder
	n := 0
	for _, c := range body.Error.Message {
		if n++; n > maxReasonRunes {
			b.WriteString("…")
			break
		}
		if c < 0x20 || c == 0x7f || c == utf8.RuneError {
			c = ' '
		}
		b.WriteRune(c)
	}
	return strings.TrimSpace(b.String())
}

// prober is the readiness probing of one replica.
type prober struct {
	url      string
	deadline time.Time // to become ready by
	failures int       // consecutive failed probes of a ready replica
}

// observeLocked moves a replica's state on one probe's result: ready on
// success, not ready after three failures, replaced when it did not become
// ready by the deadline.
func (r *Runtime) observeLocked(s *set, rp *replica, pr *prober, ok bool) {
	switch {
	case rp.stopping:
	case ok && rp.state != stateReady:
		if rp.state == stateStarting {
			r.log.Info("replica ready", slog.String("replica", rp.name), slog.Duration("startup", time.Since(rp.started)))
			s.crashes = 0
		}
		rp.state = stateReady
		pr.failures = 0
		r.notifyLocked(s)
	case !ok && rp.state == stateReady:
		pr.failures++
		if pr.failures >= 3 {
			rp.state = stateUnready
			r.log.Warn("replica failed readiness", slog.String("replica", rp.name))
			r.notifyLocked(s)
		}
	case !ok && rp.state == stateStarting && time.Now().After(pr.deadline):
		r.log.Error("replica did not become ready in time; replacing it", slog.String("replica", rp.name),
			slog.Duration("startTimeout", r.cfg.StartTimeout))
		rp.timedOut = true // its exit is a failure: replace it
		r.stopLocked(s, rp)
	}
}

// markExited takes a replica whose process which ended (or that shuts
// down) out of the endpoints, and reports whether the end was expected (a
// stop, not a crash or a timeout).
func (r *Runtime) markExited(s *set, rp *replica, which string) (expected bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	expected = (rp.stopping && !rp.timedOut) || r.ctx.Err() != nil
	if !expected {
		msg := "replica process exited unexpectedly; replacing the replica"
		if rp.grouped() {
			msg = "serving group process exited unexpectedly; recreating the whole group"
			rp.reason = which + " exited; the group is recreated"
		}
		r.log.Error(msg, slog.String("replica", rp.name),
			slog.String("process", which), slog.String("logs", r.cfg.LogDir))
	}
	rp.stopping = true
	rp.state = stateStopping
	r.notifyLocked(s)
	return expected
}

// forgetLocked removes an ended replica from its set and frees its devices.
func (r *Runtime) forgetLocked(s *set, rp *replica) {
	for i, x := range s.replicas {
		if x == rp {
			s.replicas = append(s.replicas[:i], s.replicas[i+1:]...)
			break
		}
	}
	if r.cfg.Devices != nil {
		r.cfg.Devices.Release(rp.name)
	}
	close(rp.done)
}

// replaceLocked starts a failed replica's replacement: at once after the
// first crash in a row, after a growing back-off after the next ones.
func (r *Runtime) replaceLocked(s *set) {
	s.crashes++
	backoff := crashBackoff(s.crashes)
	if backoff == 0 {
		r.reconcileLocked(s)
		return
	}
	r.log.Info("backing off before restart", slog.String("replicaSet", s.spec.Key.String()), slog.Duration("backoff", backoff))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		timer := time.NewTimer(backoff)
		defer timer.Stop()
		select {
		case <-timer.C:
			r.mu.Lock()
			r.reconcileLocked(s)
			r.unlock()
		case <-r.ctx.Done():
		}
	}()
}

// crashBackoff is 0 for the first crash, then doubles from 1s up to 30s.
func crashBackoff(crashes int) time.Duration {
	if crashes <= 1 {
		return 0
	}
	d := time.Second << (crashes - 2)
	if d > 30*time.Second || d <= 0 {
		d = 30 * time.Second
	}
	return d
}

func (r *Runtime) probe(url string) bool {
	resp, err := r.http.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stopLocked starts a graceful stop of a replica: out of the endpoints at once,
// then the queue-proxy drains and the supervisor ends the engine.
func (r *Runtime) stopLocked(s *set, rp *replica) {
	if rp.stopping {
		return
	}
	rp.stopping = true
	rp.state = stateStopping
	r.notifyLocked(s)
	r.log.Info("replica stopping", slog.String("replica", rp.name))
	if rp.qp != nil { // nil: not started yet; start signals it once it is
		_ = rp.qp.Process.Signal(syscall.SIGTERM)
	}
}

// proc is one process of a replica and the channel closed when it has
// exited.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// engines are a replica's engine processes, the leader's first.
func (rp *replica) engines() []proc {
	ps := []proc{{rp.engine, rp.engineDone}}
	for _, w := range rp.workers {
		ps = append(ps, proc{w.cmd, w.done})
	}
	return ps
}

// terminate ends a replica's processes: the queue-proxy first (it drains),
// then its engines together (a group's leader and workers at once), each
// set given StopTimeout before SIGKILL of the process groups left. A broken
// group (one of its processes exited unexpectedly) has nothing left worth
// draining: every process is killed at once, so that the group's devices
// are free for its replacement without delay.
func (r *Runtime) terminate(rp *replica, broken bool) {
	if broken {
		all := append(rp.engines(), proc{rp.qp, rp.qpDone})
		for _, p := range all {
			if !isClosed(p.done) {
				_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			}
		}
		for _, p := range all {
			<-p.done
		}
		return
	}
	r.stopProcs(rp.name, []proc{{rp.qp, rp.qpDone}})
	r.stopProcs(rp.name, rp.engines())
}

// stopProcs sends SIGTERM to every process of ps still running and waits
// StopTimeout for them all, then kills the process groups of those left.
func (r *Runtime) stopProcs(name string, ps []proc) {
	for _, p := range ps {
		if !isClosed(p.done) {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	timer := time.NewTimer(r.cfg.StopTimeout)
	defer timer.Stop()
	for _, p := range ps {
		select {
		case <-p.done:
			continue
		case <-timer.C:
		}
		for _, q := range ps {
			if !isClosed(q.done) {
				r.log.Warn("process did not stop in time; killing it", slog.String("replica", name), slog.Int("pid", q.cmd.Process.Pid))
				_ = syscall.Kill(-q.cmd.Process.Pid, syscall.SIGKILL)
			}
		}
		for _, q := range ps {
			<-q.done
		}
		return
	}
}

// Close stops every replica and waits for them, then for the watches to
// deliver the last change.
func (r *Runtime) Close() {
	r.mu.Lock()
	for _, s := range r.sets {
		clear(s.desired)
		for _, rp := range s.replicas {
			r.stopLocked(s, rp)
		}
	}
	r.mu.Unlock()
	r.stop()
	r.wg.Wait()
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.replicasDone)
	}
	r.mu.Unlock()
	r.watches.Wait()
}

// inheritedEnv is kvasir local's environment without the variables that
// stand for secrets and config maps (local.LocalEnvName): each engine gets
// only those its own template names.
func inheritedEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KVASIR_SECRET_") && !strings.HasPrefix(kv, "KVASIR_CONFIGMAP_") {
			env = append(env, kv)
		}
	}
	return env
}
