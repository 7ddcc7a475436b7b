package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
)

// kvasirBin is the binary under test, built once by TestMain.
var kvasirBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvasir-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kvasirBin = filepath.Join(dir, "kvasir")
	args := []string{"build", "-o", kvasirBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "github.com/kvasir-serving/kvasir/cmd/kvasir")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kvasir:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// platform is a running `kvasir local`.
type platform struct {
	t   *testing.T
	cmd *exec.Cmd
	URL string // the OpenAI API
	// AdminURL serves /metrics and /kvasir/replicas.
	AdminURL string
	File     string // the ModelService file it runs (and watches)
	logs     *syncBuffer
	done     chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var servingLine = regexp.MustCompile(`kvasir local is serving.* addr=(\S+) admin=(\S+)`)

// startLocal runs `kvasir local` on a ModelService document and waits until
// it serves. It is stopped (SIGTERM) at the end of the test, and the test
// checks that every replica process is gone afterwards.
func startLocal(t *testing.T, doc string, extraArgs ...string) *platform {
	t.Helper()
	return startLocalEnv(t, doc, nil, extraArgs...)
}

// startLocalEnv is startLocal with more environment (KEY=VALUE) for the
// platform and the processes it starts.
func startLocalEnv(t *testing.T, doc string, env []string, extraArgs ...string) *platform {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "models.yaml")
	require.NoError(t, os.WriteFile(file, []byte(doc), 0o644))
	args := append([]string{"local", "-f", file, "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-dir", filepath.Join(dir, "logs"),
		"--scale-interval", "100ms"}, extraArgs...)
	cmd := exec.Command(kvasirBin, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	cmd.SysProcAttr = process.DieWithParent(nil)
	require.NoError(t, cmd.Start())
	p := &platform{t: t, cmd: cmd, File: file, logs: &syncBuffer{}, done: make(chan struct{})}
	addr := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(p.logs, line)
			if m := servingLine.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1:]:
				default:
				}
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	select {
	case a := <-addr:
		p.URL, p.AdminURL = "http://"+a[0], "http://"+a[1]
	case <-p.done:
		t.Fatalf("kvasir local exited before serving:\n%s", p.logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("kvasir local did not start serving:\n%s", p.logs.String())
	}
	t.Cleanup(p.stop)
	return p
}

func (p *platform) stop() {
	var pids []int
	for _, rev := range p.replicasOrNil() {
		for _, r := range rev.Replicas {
			pids = append(pids, r.EnginePID, r.ProxyPID)
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		p.t.Errorf("kvasir local did not stop within 60s of SIGTERM")
	}
	for _, pid := range pids {
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			p.t.Errorf("replica process %d still runs after kvasir local stopped", pid)
		}
	}
	if p.t.Failed() {
		p.t.Logf("kvasir local logs:\n%s", p.logs.String())
	}
}

func (p *platform) replicasOrNil() []local.RevisionStatus {
	resp, err := http.Get(p.AdminURL + "/kvasir/replicas")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out []local.RevisionStatus
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out
}

// replicas returns the replicas of the only revision.
func (p *platform) replicas() local.RevisionStatus {
	revs := p.replicasOrNil()
	require.Len(p.t, revs, 1)
	return revs[0]
}

// metric returns the value of a gauge or counter with the given labels, and
// whether the series exists.
func (p *platform) metric(name string, labels map[string]string) (float64, bool) {
	return scrape(p.t, p.AdminURL+"/metrics", name, labels)
}

func scrape(t *testing.T, url, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	v, ok, err := promtest.ScrapeValue(url, name, labels)
	require.NoError(t, err)
	return v, ok
}

func postJSON(ctx context.Context, url, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return http.DefaultClient.Do(req)
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return string(b)
}
