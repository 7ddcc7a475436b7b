package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/testing/redistest"
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
	"github.com/kvasir-serving/kvasir/test/bench/internal/localrun"
)

// findRedis returns the redis-server to run: flagValue, else
// $KVASIR_REDIS_SERVER, redis-server on PATH, or the wrapper
// hack/redis-assets.sh leaves in its cache (the order of
// pkg/testing/redistest, which runs the script itself).
func findRedis(flagValue string) (string, error) {
	check := func(p, from string) (string, error) {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", from, err)
		}
		return p, nil
	}
	if flagValue != "" {
		return check(flagValue, "--redis-server")
	}
	if p := os.Getenv(redistest.EnvServer); p != "" {
		return check(p, "$"+redistest.EnvServer)
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	cached := redisAssetsPath()
	if _, err := os.Stat(cached); err != nil {
		return "", fmt.Errorf("no redis-server: not on PATH, $%s unset, and none in %s; run `make redis-assets` "+
			"(hack/redis-assets.sh: Debian's package, unpacked into that cache) or pass --redis-server", redistest.EnvServer, cached)
	}
	return cached, nil
}

// redisAssetsPath is where hack/redis-assets.sh leaves its redis-server
// wrapper: $KVASIR_REDIS_ASSETS, else $XDG_CACHE_HOME/kvasir/redis, else
// ~/.cache/kvasir/redis, then bin/redis-server.
func redisAssetsPath() string {
	dir := os.Getenv("KVASIR_REDIS_ASSETS")
	if dir == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		dir = filepath.Join(cache, "kvasir", "redis")
	}
	return filepath.Join(dir, "bin", "redis-server")
}

// redisServer is a redis-server this program started.
type redisServer struct {
	addr   string
	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startRedis starts redis-server on 127.0.0.1 at a free port, without
// persistence, and waits until it answers PING.
func startRedis(bin, logPath string) (*redisServer, error) {
	dir, err := os.MkdirTemp("", "kvasir-tenants-redis-")
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(benchkit.FreePort())
	r := &redisServer{addr: "127.0.0.1:" + port, dir: dir, exited: make(chan struct{})}
	logf, err := os.Create(logPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r.cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--protected-mode", "yes", "--dir", dir, "--loglevel", "warning")
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = process.DieWithParent(nil)
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		_ = r.cmd.Wait()
		logf.Close()
		close(r.exited)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := redistest.Ping(r.addr)
		if err == nil {
			return r, nil
		}
		select {
		case <-r.exited:
			r.kill()
			return nil, fmt.Errorf("redis-server exited before answering PING; its log: %s", logPath)
		default:
		}
		if time.Now().After(deadline) {
			r.kill()
			return nil, fmt.Errorf("redis-server at %s: no PONG within 10s: %w", r.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill stops redis-server at once (SIGKILL, as a crash would) and returns
// when the process is gone.
func (r *redisServer) kill() {
	if r == nil || r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
	os.RemoveAll(r.dir)
}

// platforms are the kvasir local processes of a round, sharing one
// redis-server.
type platforms []*localrun.Platform

// startPlatforms starts n kvasir local processes in w at once, each on
// file with the same flags and env, and waits until each has a ready
// replica. With n == 1 the process logs into logDir, else process i into
// logDir/process-i. On error, the processes started are returned too, to
// stop.
func startPlatforms(ctx context.Context, w *localrun.Workdir, n int, file, logDir string, flags, env []string, timeout time.Duration) (platforms, error) {
	ps := make(platforms, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range ps {
		dir := logDir
		if n > 1 {
			dir = filepath.Join(logDir, "process-"+strconv.Itoa(i))
		}
		wg.Go(func() {
			ps[i], errs[i] = w.Start(localrun.Options{File: file, LogDir: dir, Flags: flags, Env: env})
			if errs[i] == nil {
				errs[i] = ps[i].Wait(ctx, timeout, 50*time.Millisecond, "a ready replica", ready)
			}
			if errs[i] != nil && n > 1 {
				errs[i] = fmt.Errorf("process %d: %w", i, errs[i])
			}
		})
	}
	wg.Wait()
	return ps, errors.Join(errs...)
}

// ready tells whether some revision has a ready replica.
func ready(st []local.RevisionStatus) bool {
	for _, r := range st {
		if r.Ready > 0 {
			return true
		}
	}
	return false
}

// bases returns the processes' API base URLs, in order.
func (ps platforms) bases() []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Base
	}
	return out
}

// alive returns an error when any process has exited on its own.
func (ps platforms) alive() error {
	var errs []error
	for i, p := range ps {
		if err := p.Alive(); err != nil {
			errs = append(errs, fmt.Errorf("process %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// errNoDenial: the drain phase saw no 429.
var errNoDenial = errors.New("no request was refused with 429")
