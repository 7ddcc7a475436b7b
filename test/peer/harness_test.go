package peer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/testing/peerengine"
	"github.com/kvasir-serving/kvasir/pkg/testing/runtest"
)

// timeout bounds every wait of these tests but the first build of the peer.
const timeout = 15 * time.Second

// peerBinary returns the path of the peer's binary (pkg/testing/peerengine).
func peerBinary(t *testing.T) string { return peerengine.Binary(t) }

// freePort returns a TCP port that was free on the loopback interface a
// moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// peer is one running llm-d-inference-sim process.
type peer struct {
	URL    string // http://127.0.0.1:PORT
	Port   int
	log    string // its stdout and stderr
	exited chan struct{}
	err    error // how it exited, once exited is closed
}

// startPeer starts the peer on a free port with args after --port and
// --force-dummy-tokenizer, and env added to this process's environment. It
// does not wait for readiness. The process, and any child it has, is killed
// when the test ends; its log is printed when the test failed.
func startPeer(t *testing.T, env []string, args ...string) *peer {
	t.Helper()
	bin := peerBinary(t)
	port := freePort(t)
	p := &peer{URL: "http://127.0.0.1:" + strconv.Itoa(port), Port: port,
		log: filepath.Join(t.TempDir(), "peer.log"), exited: make(chan struct{})}
	logFile, err := os.Create(p.log)
	require.NoError(t, err)
	defer logFile.Close()
	args = append([]string{"--port", strconv.Itoa(port), "--force-dummy-tokenizer"}, args...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so that the cleanup reaches its children too,
	// and killed by the kernel should this test binary die first.
	cmd.SysProcAttr = process.DieWithParent(&syscall.SysProcAttr{Setpgid: true})
	require.NoError(t, cmd.Start())
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(3 * time.Second):
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // stragglers of the group, if any
		<-p.exited
		if t.Failed() {
			t.Logf("peer %s log:\n%s", strings.Join(args, " "), p.logs())
		}
	})
	return p
}

func (p *peer) logs() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 16<<10 {
		b = append([]byte("...\n"), b[len(b)-16<<10:]...)
	}
	return string(b)
}

// poll calls cond every 10 ms until it returns true, and fails the test when
// the peer exits first or timeout passes.
func (p *peer) poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-p.exited:
			t.Fatalf("peer exited (%v) while waiting for %s", p.err, what)
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// within reports whether cond turned true within d, checking every 5 ms.
func within(d time.Duration, cond func() bool) bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// status returns the status code of GET path, 0 when the request failed.
func (p *peer) status(path string) int {
	resp, err := http.Get(p.URL + path)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// waitReady waits until GET /health/ready answers 200 and returns how long
// that took from the call.
func (p *peer) waitReady(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	p.poll(t, "/health/ready to answer 200", func() bool { return p.status("/health/ready") == http.StatusOK })
	return time.Since(start)
}

// get decodes the JSON answer of GET path into out.
func (p *peer) get(t *testing.T, path string, out any) {
	t.Helper()
	resp, err := http.Get(p.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", path, body)
	if out != nil {
		require.NoError(t, json.Unmarshal(body, out), "GET %s: %s", path, body)
	}
}

// post sends in as JSON to path and returns the status and body.
func (p *peer) post(t *testing.T, path string, in any) (int, []byte) {
	t.Helper()
	b, err := json.Marshal(in)
	require.NoError(t, err)
	resp, err := http.Post(p.URL+path, "application/json", bytes.NewReader(b))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

// events collects what a kvevents.Subscriber hands over.
type events struct {
	mu      sync.Mutex
	batches []kvevents.Batch
}

func (e *events) handle(b kvevents.Batch) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.batches = append(e.batches, b)
}

// all returns every event received so far, in order, and the batches.
func (e *events) all() ([]kvevents.Event, []kvevents.Batch) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var all []kvevents.Event
	for _, b := range e.batches {
		all = append(all, b.Events...)
	}
	return all, append([]kvevents.Batch(nil), e.batches...)
}

// stored returns the BlockStored events received so far.
func (e *events) stored() []kvevents.BlockStored {
	all, _ := e.all()
	var s []kvevents.BlockStored
	for _, ev := range all {
		if bs, ok := ev.(kvevents.BlockStored); ok {
			s = append(s, bs)
		}
	}
	return s
}

// removed returns the hashes of every BlockRemoved event received so far.
func (e *events) removed() []kvevents.BlockHash {
	all, _ := e.all()
	var r []kvevents.BlockHash
	for _, ev := range all {
		if br, ok := ev.(kvevents.BlockRemoved); ok {
			r = append(r, br.Hashes...)
		}
	}
	return r
}

// subscribe runs Kvasir's own kvevents.Subscriber, bound to a free loopback
// port (the peer only connects), for topic, until the test ends; it returns
// the endpoint the peer must connect to (--zmq-endpoint) and what it
// receives.
func subscribe(t *testing.T, topic string) (string, *events, *kvevents.Subscriber) {
	t.Helper()
	endpoint := "tcp://127.0.0.1:" + strconv.Itoa(freePort(t))
	ev := &events{}
	sub := kvevents.NewSubscriber(endpoint, topic, ev.handle, kvevents.WithBind(),
		kvevents.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	runtest.Go(t, ctx, cancel, timeout, "the subscriber's Run", sub.Run)
	return endpoint, ev, sub
}
