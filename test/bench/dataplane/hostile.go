package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/bench"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// hostile measures the activator under 1,000 hostile slow-body connections
// (issue 11): its peak RSS, and honest requests' latency next to an idle
// activator's. Half the attackers announce a 30 MB body and send all of it
// but the last bytes, then stall; half trickle a small body a byte at a
// time. Each reconnects when the activator hangs up (after 408, or 503 when
// the body budget is full, after its Retry-After).
func hostile(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hostile", flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory with the built binaries")
	conns := fs.Int("conns", 1000, "hostile connections kept open")
	announce := fs.Int("announce", 30_000_000, "Content-Length the stalling attackers announce")
	rate := fs.Float64("rate", 200, "honest requests per second")
	n := fs.Int("num-prompts", 4000, "honest requests per phase")
	profile := fs.String("cpuprofile", "", "write the activator's CPU profile of the attacked phase to this file")
	elsewhere := fs.Bool("attack-elsewhere", false, "control run: aim the attack at a second activator process "+
		"(same queue-proxy) while the honest load goes to the first, to measure what the attack costs the machine alone")
	_ = fs.Parse(args)
	p, err := newProcs()
	if err != nil {
		return err
	}
	defer p.close()
	d, err := startPath(ctx, p, *bin, nil, nil, nil, "--zero-latency", "--max-num-seqs", "1024")
	if err != nil {
		return err
	}
	honest := func(label string) (*bench.Result, error) {
		cfg := bench.DefaultConfig()
		cfg.Target, cfg.Model, cfg.Rate, cfg.NumPrompts = d.act, "m", *rate, *n
		cfg.Stream, cfg.Workload, cfg.InputLen, cfg.OutputLen, cfg.Warmup = false, bench.WorkloadRandom, 16, 1, 200
		r, err := bench.Run(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		fmt.Fprintf(os.Stderr, "%-8s %7.1f req/s  p50 %.3f ms  p99 %.3f ms  errors %d\n", label, r.ThroughputRPS, r.E2EP50S*1e3, r.E2EP99S*1e3, r.Errors)
		return r, nil
	}
	idle, err := honest("idle")
	if err != nil {
		return err
	}
	idleRSS := rssKiB(d.actCmd.Process.Pid)

	// The attackers run in a process of their own, at the lowest priority:
	// in this process they would share the honest client's Go scheduler,
	// and on a 2-core machine their own CPU would be what slows the honest
	// path, which no attacker elsewhere on a network takes from a server.
	// The activator's work on their connections keeps its normal priority.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	target := strings.TrimPrefix(d.act, "http://")
	if *elsewhere {
		port := benchkit.FreePort()
		if _, err := p.start("activator-attacked", filepath.Join(*bin, "activator"), "--addr", "127.0.0.1:"+strconv.Itoa(port),
			"--admin-addr", "127.0.0.1:0", "--model", "m", "--backend", strings.TrimPrefix(d.qp, "http://"), "--log-level", "warn"); err != nil {
			return err
		}
		target = "127.0.0.1:" + strconv.Itoa(port)
		if err := benchkit.WaitOK(ctx, "http://"+target+"/healthz", 30*time.Second); err != nil {
			return err
		}
	}
	attackCmd := exec.Command("nice", "-n", "19", self, "hostile-attack", "--addr", target,
		"--conns", strconv.Itoa(*conns), "--announce", strconv.Itoa(*announce))
	var outcomes strings.Builder
	attackCmd.Stdout, attackCmd.Stderr = &outcomes, os.Stderr
	attackCmd.SysProcAttr = process.DieWithParent(nil)
	if err := attackCmd.Start(); err != nil {
		return fmt.Errorf("start the attackers: %w", err)
	}
	actx, stopAttack := context.WithCancel(ctx)
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-actx.Done():
				return
			case <-t.C:
				if v := rssKiB(d.actCmd.Process.Pid); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()
	// Let the attack build up: every attacker connected, the stallers'
	// bodies sent.
	time.Sleep(15 * time.Second)
	profiled := make(chan error, 1)
	if *profile != "" {
		go func() { profiled <- saveProfile(d.actAdmin+"/debug/pprof/profile?seconds=10", *profile) }()
	}
	attacked, err := honest("attacked")
	if *profile != "" {
		if perr := <-profiled; perr != nil {
			fmt.Fprintln(os.Stderr, "cpu profile:", perr)
		}
	}
	stopAttack()
	<-sampled
	_ = attackCmd.Process.Signal(syscall.SIGTERM)
	_ = attackCmd.Wait()
	if err != nil {
		return err
	}
	where := "the activator the honest load goes to"
	if *elsewhere {
		where = "a second activator process (control: the honest load's activator is not attacked)"
	}
	fmt.Printf("\n%d hostile slow-body connections (their own process, nice 19) against %s; honest load %.0f req/s, %d requests, non-streaming:\n\n",
		*conns, where, *rate, *n)
	fmt.Println("| phase | activator RSS (MiB) | honest p50 (ms) | honest p99 (ms) | honest errors |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: |")
	fmt.Printf("| idle | %.1f | %.3f | %.3f | %d |\n", float64(idleRSS)/1024, idle.E2EP50S*1e3, idle.E2EP99S*1e3, idle.Errors)
	fmt.Printf("| attacked | %.1f (peak) | %.3f | %.3f | %d |\n", float64(peak.Load())/1024, attacked.E2EP50S*1e3, attacked.E2EP99S*1e3, attacked.Errors)
	fmt.Printf("\np99 attacked / idle: %.2fx\n\nWhat the attackers were answered: %s\n", attacked.E2EP99S/idle.E2EP99S,
		strings.TrimSpace(outcomes.String()))
	return nil
}

// hostileAttack is the attackers' process: it keeps conns hostile
// connections open against addr until SIGTERM, then prints what they were
// answered.
func hostileAttack(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hostile-attack", flag.ExitOnError)
	addr := fs.String("addr", "", "activator host:port")
	conns := fs.Int("conns", 1000, "hostile connections kept open")
	announce := fs.Int("announce", 30_000_000, "Content-Length the stalling attackers announce")
	_ = fs.Parse(args)
	var outcomes sync.Map // outcome -> *atomic.Int64
	count := func(k string) {
		v, _ := outcomes.LoadOrStore(k, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	var open atomic.Int64
	var wg sync.WaitGroup
	for i := range *conns {
		wg.Go(func() { attacker(ctx, *addr, i%2 == 0, *announce, &open, count) })
	}
	wg.Wait()
	outcomes.Range(func(k, v any) bool { fmt.Printf("%s %d; ", k, v.(*atomic.Int64).Load()); return true })
	fmt.Println()
	return nil
}

// attacker keeps one hostile connection open until ctx ends: a staller
// sends all but the last bytes of a large body, a trickler a small body one
// byte a second.
func attacker(ctx context.Context, addr string, staller bool, announce int, open *atomic.Int64, count func(string)) {
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = 'x'
	}
	for ctx.Err() == nil {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			count("dial error")
			_ = benchkit.Sleep(ctx, time.Second)
			continue
		}
		open.Add(1)
		stop := context.AfterFunc(ctx, func() { c.Close() })
		size := announce
		if !staller {
			size = 10_000
		}
		answered := make(chan string, 1)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				answered <- "closed without an answer"
				return
			}
			answered <- strconv.Itoa(resp.StatusCode)
		}()
		var outcome string
		_, err = fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", size)
		for sent := 0; err == nil && outcome == "" && sent < size-1; {
			select {
			case outcome = <-answered: // answered before the body was in (503): stop sending
				continue
			default:
			}
			if staller {
				k := min(len(chunk), size-1-sent)
				_, err = c.Write(chunk[:k])
				sent += k
			} else {
				_, err = c.Write(chunk[:1])
				sent++
				_ = benchkit.Sleep(ctx, time.Second)
			}
		}
		if outcome == "" {
			select {
			case outcome = <-answered:
			case <-ctx.Done():
				outcome = "still open at the end"
			}
		}
		count(outcome)
		stop()
		c.Close()
		open.Add(-1)
		if outcome == "503" {
			_ = benchkit.Sleep(ctx, time.Second) // Retry-After
		}
	}
}

// rssKiB reads a process's resident set size (0 when unknown).
func rssKiB(pid int) int64 {
	v, _ := benchkit.ProcStatusKiB(pid, "VmRSS")
	return v
}

// saveProfile fetches a pprof profile into a file.
func saveProfile(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}
