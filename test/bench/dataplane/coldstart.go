package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

// coldstart runs `kvasir local` on a simulator with a known startup delay,
// lets it go to zero, and times the first token of a request sent at zero.
func coldstart(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("coldstart", flag.ExitOnError)
	bin := fs.String("bin", "bin", "directory with the built binaries")
	delay := fs.Duration("startup-delay", 2*time.Second, "the simulated engine's load time")
	n := fs.Int("runs", 5, "cold starts to measure")
	_ = fs.Parse(args)
	p, err := newProcs()
	if err != nil {
		return err
	}
	defer p.close()
	doc := fmt.Sprintf(`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: cold}
spec:
  template:
    engine: {type: sim, args: ["--startup-delay=%s"]}
    scaling: {minScale: 0, initialScale: 0, scaleToZeroGracePeriod: 1s}
`, delay)
	file := filepath.Join(p.dir, "cold.yaml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		return err
	}
	port, adminPort := benchkit.FreePort(), benchkit.FreePort()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	admin := "http://127.0.0.1:" + strconv.Itoa(adminPort)
	if _, err := p.start("kvasir-local", filepath.Join(*bin, "kvasir"), "local", "-f", file, "--addr", "127.0.0.1:"+strconv.Itoa(port),
		"--admin-addr", "127.0.0.1:"+strconv.Itoa(adminPort),
		"--scale-interval", "100ms", "--log-dir", filepath.Join(p.dir, "logs")); err != nil {
		return err
	}
	if err := benchkit.WaitOK(ctx, base+"/healthz", 30*time.Second); err != nil {
		return err
	}
	body := `{"model":"cold","stream":true,"max_tokens":1,"messages":[{"role":"user","content":"hello"}]}`
	var cold, warm, engine []float64
	for i := 0; i < *n; i++ {
		if err := waitZero(ctx, admin); err != nil {
			return err
		}
		c, err := firstToken(ctx, base, body)
		if err != nil {
			return err
		}
		w, err := firstToken(ctx, base, body) // now warm, through the same path
		if err != nil {
			return err
		}
		st, err := benchkit.Replicas(admin)
		if err != nil || len(st) != 1 || len(st[0].Replicas) != 1 {
			return fmt.Errorf("replicas: %v %+v", err, st)
		}
		e, err := firstToken(ctx, "http://"+st[0].Replicas[0].EngineAddr, body) // the engine alone
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "run %d: cold first token %.1f ms, warm %.1f ms, engine alone %.1f ms\n", i+1, c*1e3, w*1e3, e*1e3)
		cold, warm, engine = append(cold, c), append(warm, w), append(engine, e)
	}
	d := delay.Seconds()
	fmt.Printf("\nCold start, %d runs, simulated engine load time %s:\n\n", *n, delay)
	fmt.Println("| measure | median (ms) | max (ms) |\n| --- | ---: | ---: |")
	row := func(name string, v []float64, sub float64) {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		fmt.Printf("| %s | %.1f | %.1f |\n", name, (s[len(s)/2]-sub)*1e3, (s[len(s)-1]-sub)*1e3)
	}
	row("first token of a request sent at zero", cold, 0)
	row("same, minus the engine's load time (Kvasir overhead + engine TTFT)", cold, d)
	row("warm first token through the activator", warm, 0)
	row("warm first token from the engine alone", engine, 0)
	over := make([]float64, len(cold))
	for i := range cold {
		over[i] = cold[i] - d - engine[i]
	}
	row("Kvasir overhead (cold - load time - engine's own TTFT)", over, 0)
	return nil
}

func waitZero(ctx context.Context, base string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		st, err := benchkit.Replicas(base)
		if err == nil && len(st) == 1 && len(st[0].Replicas) == 0 && st[0].Desired == 0 {
			return nil
		}
		if err := benchkit.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("revision did not reach zero")
}

var contentRe = regexp.MustCompile(`"content":"[^"]+`)

// firstToken returns the time from sending a streaming request to the first
// SSE event that carries content.
func firstToken(ctx context.Context, base, body string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if contentRe.MatchString(sc.Text()) {
			t := time.Since(start).Seconds()
			for sc.Scan() {
			}
			return t, nil
		}
	}
	return 0, fmt.Errorf("stream ended without content: %v", sc.Err())
}
