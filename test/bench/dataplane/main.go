// Command dataplane measures the data plane's own costs with real processes
// on loopback, as reported in docs/benchmarks.md:
//
//	go run ./test/bench/dataplane hops      # added latency per hop vs nginx proxy_pass
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
	"os"
	"os/exec"
	"path/filepath"
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
	benchkit.Main("dataplane", "dataplane hops|coldstart|streams|hostile [flags]", map[string]benchkit.Benchmark{
		"hops": hops, "coldstart": coldstart, "streams": streams, "hostile": hostile,
		"hostile-attack": hostileAttack, // the attackers' process of `hostile`
	}, "")
}

// procs are the processes a benchmark started; all are killed at the end.
type procs struct {
	dir  string
	list []*exec.Cmd
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
	if err := cmd.Start(); err != nil {
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

func startPath(ctx context.Context, p *procs, bin string, actEnv []string, simArgs ...string) (*dataPath, error) {
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
	if d.qpCmd, err = p.start("queue-proxy", filepath.Join(bin, "queue-proxy"), "--port", strconv.Itoa(qpPort),
		"--engine-url", d.sim, "--pod-name", "bench"); err != nil {
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

func startNginx(ctx context.Context, p *procs, name, backend, workers string) (string, error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		return "", errors.New("nginx not found on PATH (Debian: apt-get install nginx-light)")
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
		return "", err
	}
	if _, err := p.start(name, nginx, "-c", path, "-p", p.dir); err != nil {
		return "", err
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", port)
	probe := u + "/health"
	if strings.Contains(name, "qp") {
		probe = u + "/kvasir/ready"
	}
	return u, benchkit.WaitOK(ctx, probe, 10*time.Second)
}

func hops(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hops", flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory with the built binaries")
	rate := fs.Float64("rate", 1000, "requests per second")
	n := fs.Int("num-prompts", 10000, "requests per target and round")
	rounds := fs.Int("rounds", 3, "rounds over all targets (the median round is reported)")
	only := fs.String("only", "", "comma-separated subset of targets: engine,nginx,queue-proxy,activator")
	actProcs := fs.Int("activator-gomaxprocs", 0, "GOMAXPROCS of the activator (0: Go's default, one per core)")
	workers := fs.String("nginx-workers", "auto", "nginx worker_processes")
	_ = fs.Parse(args)
	p, err := newProcs()
	if err != nil {
		return err
	}
	defer p.close()
	var actEnv []string
	if *actProcs > 0 {
		actEnv = []string{"GOMAXPROCS=" + strconv.Itoa(*actProcs)}
	}
	d, err := startPath(ctx, p, *bin, actEnv, "--zero-latency", "--max-num-seqs", "1024")
	if err != nil {
		return err
	}
	ngx, err := startNginx(ctx, p, "nginx-engine", d.sim, *workers)
	if err != nil {
		return err
	}
	ngxQP, err := startNginx(ctx, p, "nginx-qp", d.qp, *workers)
	if err != nil {
		return err
	}
	targets := []struct{ name, url string }{
		{"engine (direct)", d.sim}, {"nginx -> engine", ngx}, {"queue-proxy -> engine", d.qp},
		{"nginx -> queue-proxy -> engine", ngxQP}, {"activator -> queue-proxy -> engine", d.act},
	}
	if *only != "" {
		keep := targets[:0]
		for _, t := range targets {
			for _, o := range strings.Split(*only, ",") {
				if strings.Contains(t.name, o) && (o != "engine" || t.name == "engine (direct)") {
					keep = append(keep, t)
					break
				}
			}
		}
		targets = keep
	}
	type lat struct{ p50, p99 float64 }
	results := make(map[string][]lat)
	for round := 0; round < *rounds; round++ {
		for _, t := range targets {
			cfg := bench.DefaultConfig()
			cfg.Target, cfg.Model, cfg.Rate, cfg.NumPrompts = t.url, "m", *rate, *n
			cfg.Stream, cfg.Workload, cfg.InputLen, cfg.OutputLen, cfg.Warmup = false, bench.WorkloadRandom, 16, 1, 200
			cfg.Seed = int64(round + 1)
			r, err := bench.Run(ctx, cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			if r.Errors > 0 {
				return fmt.Errorf("%s: %d errors: %+v", t.name, r.Errors, r.ErrorExamples)
			}
			fmt.Fprintf(os.Stderr, "round %d %-36s %7.1f req/s  p50 %.3f ms  p99 %.3f ms  (%.1fs)\n", round+1, t.name, r.ThroughputRPS, r.E2EP50S*1e3, r.E2EP99S*1e3, r.DurationS)
			results[t.name] = append(results[t.name], lat{r.E2EP50S, r.E2EP99S})
		}
	}
	med := func(name string, f func(lat) float64) float64 {
		var v []float64
		for _, l := range results[name] {
			v = append(v, f(l))
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	p50 := func(l lat) float64 { return l.p50 }
	p99 := func(l lat) float64 { return l.p99 }
	fmt.Printf("\nEnd-to-end latency at %.0f req/s, non-streaming, zero-latency engine (median of %d rounds of %d requests):\n\n", *rate, *rounds, *n)
	fmt.Println("| path | p50 (ms) | p99 (ms) |")
	fmt.Println("| --- | ---: | ---: |")
	for _, t := range targets {
		fmt.Printf("| %s | %.3f | %.3f |\n", t.name, med(t.name, p50)*1e3, med(t.name, p99)*1e3)
	}
	hop := func(with, without string) (float64, float64) {
		return (med(with, p50) - med(without, p50)) * 1e3, (med(with, p99) - med(without, p99)) * 1e3
	}
	if len(targets) < 5 {
		return nil
	}
	fmt.Print("\nAdded latency of one hop, each next to nginx proxy_pass in front of the same backend:\n\n")
	fmt.Println("| hop | backend | p50 (ms) | p99 (ms) | nginx p50 (ms) | nginx p99 (ms) | ratio p50 | ratio p99 |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	row := func(name, backend, with, nginxWith, without string) {
		h50, h99 := hop(with, without)
		n50, n99 := hop(nginxWith, without)
		fmt.Printf("| %s | %s | %.3f | %.3f | %.3f | %.3f | %.2fx | %.2fx |\n", name, backend, h50, h99, n50, n99, h50/n50, h99/n99)
	}
	row("queue-proxy", "engine", "queue-proxy -> engine", "nginx -> engine", "engine (direct)")
	row("activator", "queue-proxy", "activator -> queue-proxy -> engine", "nginx -> queue-proxy -> engine", "queue-proxy -> engine")
	return nil
}
