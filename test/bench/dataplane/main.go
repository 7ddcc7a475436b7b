// Command dataplane measures the data plane's own costs with real processes
// on loopback, as reported in docs/benchmarks.md:
//
//	go run ./test/bench/dataplane hops      # added latency and CPU per hop vs nginx proxy_pass and a minimal fasthttp proxy
//	go run ./test/bench/dataplane coldstart # Kvasir's share of a cold start
//	go run ./test/bench/dataplane streams   # activator RSS with 2,000 concurrent SSE streams
//	go run ./test/bench/dataplane hostile   # activator RSS and honest latency under 1,000 slow-body connections
//
// It expects `make build` to have put the binaries in bin/ (flag --bin), and
// nginx on PATH for `hops` (Debian: apt-get install nginx-light).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/bench"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

func main() {
	benchkit.Main("dataplane", "dataplane hops|coldstart|streams|hostile|waits [flags]", map[string]benchkit.Benchmark{
		"hops": hops, "coldstart": coldstart, "streams": streams, "hostile": hostile,
		"waits":          waits,
		"hostile-attack": hostileAttack, // the attackers' process of `hostile`
		"floor-proxy":    floorProxy,    // the minimal fasthttp proxy of `hops`
	}, "")
}

// procs are the processes a benchmark started; all are killed at the end.
type procs struct {
	dir  string
	list []*exec.Cmd
	// split, when set (hops --pin), puts the engine on split.rest and
	// every other process on split.hops.
	split *cpuSplit
}

func newProcs() (*procs, error) {
	dir, err := os.MkdirTemp("", "kvasir-bench-")
	return &procs{dir: dir}, err
}

func (p *procs) start(name string, argv ...string) (*exec.Cmd, error) {
	return p.startEnv(name, nil, argv...)
}

// startEnv starts a process with extra environment (KEY=VALUE).
func (p *procs) startEnv(name string, env []string, argv ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(p.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = process.DieWithParent(nil)
	start := cmd.Start
	if p.split != nil {
		set := p.split.hops
		if name == "engine-sim" {
			set = p.split.rest
		}
		start = func() error { return startOn(set, cmd) }
	}
	if err := start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.list = append(p.list, cmd)
	return cmd, nil
}

func (p *procs) close() {
	for i := len(p.list) - 1; i >= 0; i-- {
		_ = p.list[i].Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func(c *exec.Cmd) { _ = c.Wait(); close(done) }(p.list[i])
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.list[i].Process.Kill()
		}
	}
	os.RemoveAll(p.dir)
}

// dataPath starts sim, queue-proxy and activator: the three hops of a replica.
type dataPath struct {
	sim, qp, act, actAdmin string // base URLs (actAdmin: the activator's admin listener)
	simCmd, qpCmd, actCmd  *exec.Cmd
}

func startPath(ctx context.Context, p *procs, bin string, actEnv, qpEnv, qpArgs []string, simArgs ...string) (*dataPath, error) {
	simPort, qpPort, actPort, adminPort := benchkit.FreePort(), benchkit.FreePort(), benchkit.FreePort(), benchkit.FreePort()
	d := &dataPath{
		sim:      fmt.Sprintf("http://127.0.0.1:%d", simPort),
		qp:       fmt.Sprintf("http://127.0.0.1:%d", qpPort),
		act:      fmt.Sprintf("http://127.0.0.1:%d", actPort),
		actAdmin: fmt.Sprintf("http://127.0.0.1:%d", adminPort),
	}
	var err error
	if d.simCmd, err = p.start("engine-sim", append([]string{filepath.Join(bin, "engine-sim"), "--port", strconv.Itoa(simPort), "--model", "m"}, simArgs...)...); err != nil {
		return nil, err
	}
	if d.qpCmd, err = p.startEnv("queue-proxy", qpEnv, append([]string{filepath.Join(bin, "queue-proxy"), "--port", strconv.Itoa(qpPort),
		"--engine-url", d.sim, "--pod-name", "bench"}, qpArgs...)...); err != nil {
		return nil, err
	}
	if d.actCmd, err = p.startEnv("activator", actEnv, filepath.Join(bin, "activator"), "--addr", "127.0.0.1:"+strconv.Itoa(actPort),
		"--admin-addr", "127.0.0.1:"+strconv.Itoa(adminPort), "--model", "m", "--backend", "127.0.0.1:"+strconv.Itoa(qpPort), "--log-level", "warn"); err != nil {
		return nil, err
	}
	for _, u := range []string{d.sim + "/health", d.qp + "/kvasir/ready", d.act + "/healthz"} {
		if err := benchkit.WaitOK(ctx, u, 30*time.Second); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// startNginx starts nginx proxy_pass in front of backend; the command is
// its master process (its workers are the master's children).
func startNginx(ctx context.Context, p *procs, name, backend, workers string) (string, *exec.Cmd, error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		return "", nil, errors.New("nginx not found on PATH (Debian: apt-get install nginx-light)")
	}
	port := benchkit.FreePort()
	conf := fmt.Sprintf(`worker_processes %[5]s;
daemon off;
pid %[1]s/%[4]s.pid;
error_log %[1]s/%[4]s-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  upstream backend { server %[2]s; keepalive 1024; }
  server {
    listen 127.0.0.1:%[3]d;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, p.dir, strings.TrimPrefix(backend, "http://"), port, name, workers)
	path := filepath.Join(p.dir, name+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", nil, err
	}
	cmd, err := p.start(name, nginx, "-c", path, "-p", p.dir)
	if err != nil {
		return "", nil, err
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	probe := u + "/health"
	if strings.Contains(name, "qp") {
		probe = u + "/kvasir/ready"
	}
	return u, cmd, benchkit.WaitOK(ctx, probe, 10*time.Second)
}

// startFloor starts this program's floor-proxy subcommand (floor.go) as its
// own process in front of backend.
func startFloor(ctx context.Context, p *procs, name, backend string, env []string, raw bool) (string, *exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", benchkit.FreePort())
	cmd, err := p.startEnv(name, env, self, "floor-proxy", "--listen", addr, "--upstream", strings.TrimPrefix(backend, "http://"),
		"--raw-syscalls="+strconv.FormatBool(raw))
	if err != nil {
		return "", nil, err
	}
	u := "http://" + addr
	probe := u + "/health"
	if strings.Contains(name, "qp") {
		probe = u + "/kvasir/ready"
	}
	return u, cmd, benchkit.WaitOK(ctx, probe, 10*time.Second)
}

// The paths `hops` measures; --only picks them by substring.
const (
	pathEngine  = "engine (direct)"
	pathNginx   = "nginx -> engine"
	pathFloor   = "floor (fasthttp) -> engine"
	pathRaw     = "floor (fasthttp, raw syscalls) -> engine"
	pathQP      = "queue-proxy -> engine"
	pathNginxQP = "nginx -> queue-proxy -> engine"
	pathFloorQP = "floor (fasthttp) -> queue-proxy -> engine"
	pathRawQP   = "floor (fasthttp, raw syscalls) -> queue-proxy -> engine"
	pathAct     = "activator -> queue-proxy -> engine"
)

// hopTarget is one path of `hops` and the processes on it whose CPU is
// measured: the first process the request reaches (front; for the engine
// alone, none), the queue-proxy behind it (0 when there is none) and the
// engine.
type hopTarget struct {
	name, url         string
	front, qp, engine int // pids
}

// hopSample is one round of one path: latency in seconds, CPU in µs per
// request of the front process, the queue-proxy behind it and the engine
// (NaN where the path has no such process).
type hopSample struct {
	p50, p99 float64
	cpu      [3]float64
	e2e      []float64 // the round's latencies, sorted
}

func hops(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hops", flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory with the built binaries")
	rate := fs.Float64("rate", 1000, "requests per second")
	closed := fs.Int("concurrency", 0, "closed loop instead of --rate: this many requests in flight, each sent when one completes (1: latency without queueing)")
	n := fs.Int("num-prompts", 10000, "requests per target and round")
	rounds := fs.Int("rounds", 3, "rounds over all targets (the median round is reported)")
	only := fs.String("only", "", "comma-separated subset of targets, each a substring of the paths' names: engine,nginx,floor,raw,queue-proxy,activator")
	actProcs := fs.Int("activator-gomaxprocs", 0, "GOMAXPROCS of the activator and of the floor proxies (0: Go's default, one per core)")
	workers := fs.String("nginx-workers", "auto", "nginx worker_processes")
	qpArgs := fs.String("queue-proxy-args", "", "more flags for the queue-proxy, space-separated (e.g. --kv-flush-interval=100ms)")
	qpProcs := fs.Int("queue-proxy-gomaxprocs", 0, "GOMAXPROCS of the queue-proxy, pinned (0: not pinned; the queue-proxy fits it to its use, pkg/maxprocs)")
	resamples := fs.Int("bootstrap", 1000, "bootstrap resamples of the rounds for the spread of the pooled estimate (0: none)")
	pin := fs.Bool("pin", false, "pin the hops under test (nginx with one worker, the floors, the queue-proxy, the activator) to the last CPU, and this load generator and the engine to the others (Linux, two CPUs or more)")
	_ = fs.Parse(args)
	if *closed < 0 {
		return fmt.Errorf("--concurrency: must be >= 0, got %d", *closed)
	}
	p, err := newProcs()
	if err != nil {
		return err
	}
	defer p.close()
	if *pin {
		if p.split, err = splitCPUs(); err != nil {
			return err
		}
		if err := p.split.pinSelf(); err != nil {
			return err
		}
		if *workers == "auto" {
			*workers = "1" // the one CPU of the hops
		}
	}
	actEnv := gomaxprocsEnv(*actProcs)
	d, err := startPath(ctx, p, *bin, actEnv, gomaxprocsEnv(*qpProcs), strings.Fields(*qpArgs), "--zero-latency", "--max-num-seqs", "1024")
	if err != nil {
		return err
	}
	ngx, ngxCmd, err := startNginx(ctx, p, "nginx-engine", d.sim, *workers)
	if err != nil {
		return err
	}
	ngxQP, ngxQPCmd, err := startNginx(ctx, p, "nginx-qp", d.qp, *workers)
	if err != nil {
		return err
	}
	floor, floorCmd, err := startFloor(ctx, p, "floor-engine", d.sim, actEnv, false)
	if err != nil {
		return err
	}
	floorQP, floorQPCmd, err := startFloor(ctx, p, "floor-qp", d.qp, actEnv, false)
	if err != nil {
		return err
	}
	raw, rawCmd, err := startFloor(ctx, p, "floor-raw-engine", d.sim, actEnv, true)
	if err != nil {
		return err
	}
	rawQP, rawQPCmd, err := startFloor(ctx, p, "floor-raw-qp", d.qp, actEnv, true)
	if err != nil {
		return err
	}
	sim, qp := d.simCmd.Process.Pid, d.qpCmd.Process.Pid
	targets := []hopTarget{
		{pathEngine, d.sim, 0, 0, sim},
		{pathNginx, ngx, ngxCmd.Process.Pid, 0, sim},
		{pathFloor, floor, floorCmd.Process.Pid, 0, sim},
		{pathRaw, raw, rawCmd.Process.Pid, 0, sim},
		{pathQP, d.qp, qp, 0, sim},
		{pathNginxQP, ngxQP, ngxQPCmd.Process.Pid, qp, sim},
		{pathFloorQP, floorQP, floorQPCmd.Process.Pid, qp, sim},
		{pathRawQP, rawQP, rawQPCmd.Process.Pid, qp, sim},
		{pathAct, d.act, d.actCmd.Process.Pid, qp, sim},
	}
	if *only != "" {
		keep := targets[:0]
		for _, t := range targets {
			for _, o := range strings.Split(*only, ",") {
				if strings.Contains(t.name, o) && (o != "engine" || t.name == pathEngine) {
					keep = append(keep, t)
					break
				}
			}
		}
		targets = keep
	}
	meter := cpuMeter{hz: userHZ()}
	const warmup = 200
	results := make(map[string][]hopSample)
	for round := 0; round < *rounds; round++ {
		for _, t := range targets {
			cfg := bench.DefaultConfig()
			cfg.Target, cfg.Model, cfg.Rate, cfg.NumPrompts = t.url, "m", *rate, *n
			if *closed > 0 {
				cfg.Rate, cfg.MaxConcurrency = 0, *closed
			}
			cfg.Stream, cfg.Workload, cfg.InputLen, cfg.OutputLen, cfg.Warmup = false, bench.WorkloadRandom, 16, 1, warmup
			cfg.Seed = int64(round + 1)
			pids := []int{t.front, t.qp, t.engine}
			before, err := meter.snapshot(pids)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			r, err := bench.Run(ctx, cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			after, err := meter.snapshot(pids)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			if r.Errors > 0 {
				return fmt.Errorf("%s: %d errors: %+v", t.name, r.Errors, r.ErrorExamples)
			}
			// The round's CPU includes its warm-up requests: divide by all.
			reqs := float64(r.Completed + warmup)
			s := hopSample{p50: r.E2EP50S, p99: r.E2EP99S, e2e: r.E2E}
			for i, pid := range pids {
				s.cpu[i] = math.NaN()
				if pid != 0 {
					s.cpu[i] = float64(after[i]-before[i]) / float64(time.Microsecond) / reqs
				}
			}
			fmt.Fprintf(os.Stderr, "round %d %-42s %7.1f req/s  p50 %.3f ms  p99 %.3f ms  CPU µs/req front %s qp %s engine %s  (%.1fs)\n",
				round+1, t.name, r.ThroughputRPS, r.E2EP50S*1e3, r.E2EP99S*1e3, fmtCPU(s.cpu[0]), fmtCPU(s.cpu[1]), fmtCPU(s.cpu[2]), r.DurationS)
			results[t.name] = append(results[t.name], s)
		}
	}
	med := func(name string, f func(hopSample) float64) float64 {
		var v []float64
		for _, l := range results[name] {
			v = append(v, f(l))
		}
		return median(v)
	}
	p50 := func(l hopSample) float64 { return l.p50 }
	p99 := func(l hopSample) float64 { return l.p99 }
	cpu := func(i int) func(hopSample) float64 { return func(l hopSample) float64 { return l.cpu[i] } }
	load := fmt.Sprintf("at %.0f req/s", *rate)
	if *closed > 0 {
		load = fmt.Sprintf("in a closed loop of %d request(s) in flight", *closed)
	}
	if *pin {
		load += " (--pin: the hops on one CPU, the load generator and the engine on the others)"
	}
	fmt.Printf("\nEnd-to-end latency %s, non-streaming, zero-latency engine, and CPU (utime+stime) per request of each process on the path (median of %d rounds of %d requests; CPU divided by the round's requests including its %d warm-up):\n\n", load, *rounds, *n, warmup)
	fmt.Println("| path | p50 (ms) | p99 (ms) | CPU µs/req: first process | CPU µs/req: queue-proxy behind it | CPU µs/req: engine |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, t := range targets {
		fmt.Printf("| %s | %.3f | %.3f | %s | %s | %s |\n", t.name, med(t.name, p50)*1e3, med(t.name, p99)*1e3,
			fmtCPU(med(t.name, cpu(0))), fmtCPU(med(t.name, cpu(1))), fmtCPU(med(t.name, cpu(2))))
	}
	have := func(names ...string) bool {
		for _, n := range names {
			if len(results[n]) == 0 {
				return false
			}
		}
		return true
	}
	if !have(pathEngine, pathNginx, pathQP, pathNginxQP) {
		return nil
	}
	fmt.Print("\nAdded latency of one hop (its path minus the path without it in the same round, the median over the rounds) and the hop's own CPU per request, next to nginx proxy_pass, the floor (a minimal fasthttp proxy) and the same floor with raw system calls (pkg/rawconn, as the activator and the queue-proxy read and write) in front of the same backend:\n\n")
	fmt.Println("| hop | backend | p50 (ms) | p99 (ms) | CPU (µs/req) | ÷ nginx p50 | ÷ nginx p99 | ÷ nginx CPU | ÷ floor CPU | ÷ raw floor CPU |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	// added is a hop's added latency: in each round its path's percentile
	// minus the same round's path without it, the median over the rounds
	// (pairing within a round takes out the machine's drift between rounds).
	added := func(with, without string, f func(hopSample) float64) float64 {
		var v []float64
		for i := range results[with] {
			v = append(v, f(results[with][i])-f(results[without][i]))
		}
		return median(v)
	}
	ratio := func(c float64, of string) string {
		if !have(of) {
			return "-"
		}
		return fmt.Sprintf("%.2fx", c/med(of, cpu(0)))
	}
	row := func(hop, backend, with, nginxWith, floorWith, rawWith, without string) {
		if !have(with, without) {
			return
		}
		h50, h99 := added(with, without, p50)*1e3, added(with, without, p99)*1e3
		n50, n99 := added(nginxWith, without, p50)*1e3, added(nginxWith, without, p99)*1e3
		c, nc := med(with, cpu(0)), med(nginxWith, cpu(0))
		fmt.Printf("| %s | %s | %.3f | %.3f | %s | %s | %s | %.2fx | %s | %s |\n", hop, backend, h50, h99, fmtCPU(c), over(h50, n50), over(h99, n99), c/nc,
			ratio(c, floorWith), ratio(c, rawWith))
	}
	row("nginx", "engine", pathNginx, pathNginx, pathFloor, pathRaw, pathEngine)
	row("floor (fasthttp)", "engine", pathFloor, pathNginx, pathFloor, pathRaw, pathEngine)
	row("floor (fasthttp, raw syscalls)", "engine", pathRaw, pathNginx, pathFloor, pathRaw, pathEngine)
	row("queue-proxy", "engine", pathQP, pathNginx, pathFloor, pathRaw, pathEngine)
	row("nginx", "queue-proxy", pathNginxQP, pathNginxQP, pathFloorQP, pathRawQP, pathQP)
	row("floor (fasthttp)", "queue-proxy", pathFloorQP, pathNginxQP, pathFloorQP, pathRawQP, pathQP)
	row("floor (fasthttp, raw syscalls)", "queue-proxy", pathRawQP, pathNginxQP, pathFloorQP, pathRawQP, pathQP)
	row("activator", "queue-proxy", pathAct, pathNginxQP, pathFloorQP, pathRawQP, pathQP)
	if *rounds < 2 {
		return nil
	}
	// Pooled: each path's percentile over the requests of all its rounds.
	// With many short rounds every path samples the same stretches of the
	// machine's weather, so a p99 over all of them is steadier than the
	// median of rounds' p99s, each the tenth-slowest of a thousand.
	pooled := make(map[string][2]float64)
	for name, ss := range results {
		var all []float64
		for _, s := range ss {
			all = append(all, s.e2e...)
		}
		sort.Float64s(all)
		pooled[name] = [2]float64{bench.Percentile(all, 50), bench.Percentile(all, 99)}
	}
	fmt.Printf("\nThe same hops, each path's percentiles taken over the requests of all %d rounds together (the hop's minus the path without it):\n\n", *rounds)
	fmt.Println("| hop | backend | p50 (ms) | p99 (ms) | ÷ nginx p50 | ÷ nginx p99 |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: |")
	rows := []hopRow{
		{"nginx", "engine", pathNginx, pathNginx, pathEngine},
		{"floor (fasthttp)", "engine", pathFloor, pathNginx, pathEngine},
		{"floor (fasthttp, raw syscalls)", "engine", pathRaw, pathNginx, pathEngine},
		{"queue-proxy", "engine", pathQP, pathNginx, pathEngine},
		{"nginx", "queue-proxy", pathNginxQP, pathNginxQP, pathQP},
		{"floor (fasthttp)", "queue-proxy", pathFloorQP, pathNginxQP, pathQP},
		{"floor (fasthttp, raw syscalls)", "queue-proxy", pathRawQP, pathNginxQP, pathQP},
		{"activator", "queue-proxy", pathAct, pathNginxQP, pathQP},
	}
	rows = slices.DeleteFunc(rows, func(r hopRow) bool { return !have(r.with, r.nginxWith, r.without) })
	for _, r := range rows {
		h50, h99 := (pooled[r.with][0]-pooled[r.without][0])*1e3, (pooled[r.with][1]-pooled[r.without][1])*1e3
		n50, n99 := (pooled[r.nginxWith][0]-pooled[r.without][0])*1e3, (pooled[r.nginxWith][1]-pooled[r.without][1])*1e3
		fmt.Printf("| %s | %s | %.3f | %.3f | %s | %s |\n", r.hop, r.backend, h50, h99, over(h50, n50), over(h99, n99))
	}
	if *resamples <= 0 || len(rows) == 0 {
		return nil
	}
	// How sure the pooled estimate is: resample the rounds.
	byRound := make(map[string][][]float64, len(results))
	for name, ss := range results {
		for _, s := range ss {
			byRound[name] = append(byRound[name], s.e2e)
		}
	}
	odds := bootstrapGoals(byRound, rows, *resamples, rand.New(rand.NewPCG(1, 2)))
	fmt.Printf("\nThe pooled estimate's spread: %d bootstrap resamples of the %d rounds (whole rounds, the same for every path), the share of them in which each goal held (added p50 within %.1fx of nginx's, added p99 within %.0fx) and the middle 90%% of the ratio (\"-\" when nginx's added latency was not positive in at least 95%% of them):\n\n",
		*resamples, *rounds, hopGoals[0], hopGoals[1])
	fmt.Println("| hop | backend | p50 goal held | p50 ÷ nginx, 5-95% | p99 goal held | p99 ÷ nginx, 5-95% |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: |")
	interval := func(lo, hi float64) string {
		if math.IsNaN(lo) {
			return "-"
		}
		return fmt.Sprintf("%.2fx-%.2fx", lo, hi)
	}
	for i, r := range rows {
		if r.with == r.nginxWith {
			continue
		}
		o := odds[i]
		fmt.Printf("| %s | %s | %.0f%% | %s | %.0f%% | %s |\n", r.hop, r.backend, o.held[0]*100, interval(o.lo[0], o.hi[0]),
			o.held[1]*100, interval(o.lo[1], o.hi[1]))
	}
	return nil
}

// median is the middle of v (the mean of the two middle values for an even
// count), as bench.Percentile reads it; v is sorted in place.
func median(v []float64) float64 {
	sort.Float64s(v)
	return bench.Percentile(v, 50)
}

// over prints a ÷ b, "-" when b is not positive (a baseline that added no
// latency has no ratio).
func over(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// fmtCPU prints µs of CPU per request, "-" for none.
func fmtCPU(us float64) string {
	if math.IsNaN(us) {
		return "-"
	}
	return fmt.Sprintf("%.1f", us)
}

// gomaxprocsEnv is the environment that sets GOMAXPROCS to n, none for 0.
func gomaxprocsEnv(n int) []string {
	if n <= 0 {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(n)}
}
