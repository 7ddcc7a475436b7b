package benchkit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// Benchmark runs one benchmark with the arguments after its name.
type Benchmark func(ctx context.Context, args []string) error

// Main runs the benchmark os.Args[1] names, on a context that ends at
// SIGINT or SIGTERM, and exits: 2 with usage when no name is given, 1 with
// the error (prefixed by prog) when it fails. want ends the error of an
// unknown name (e.g. " (want a or b)").
func Main(prog, usage string, benchmarks map[string]Benchmark, want string) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if len(os.Args) < 2 {
		stop()
		fmt.Fprintln(os.Stderr, "usage: "+usage)
		os.Exit(2)
	}
	var err error
	if run, ok := benchmarks[os.Args[1]]; ok {
		err = run(ctx, os.Args[2:])
	} else {
		err = fmt.Errorf("unknown benchmark %q%s", os.Args[1], want)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, prog+":", err)
		os.Exit(1)
	}
}

// FreePort returns a TCP port free on 127.0.0.1 at the time of the call.
func FreePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Sleep waits d, or until ctx ends (its error).
func Sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// WaitOK polls url every 10 ms until it answers 200.
func WaitOK(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s did not answer 200 within %s", url, timeout)
}

// Replicas reads a platform's /kvasir/replicas from its admin base URL.
func Replicas(admin string) ([]local.RevisionStatus, error) {
	resp, err := http.Get(admin + "/kvasir/replicas")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/kvasir/replicas: %s", resp.Status)
	}
	var st []local.RevisionStatus
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// ProcStatusKiB reads a size field of /proc/PID/status (VmRSS, VmHWM, ...)
// in KiB.
func ProcStatusKiB(pid int, field string) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}
