package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/local"
)

// fleetBehaviour is what a fake fleet does.
type fleetBehaviour int

const (
	fleetOK         fleetBehaviour = iota
	fleetStartFails                // the launcher fails before serving
	fleetNeverReady                // serves, but no replica becomes ready
	fleetAllFail                   // ready, but every request gets a 500
	fleetBlocks                    // ready, and holds every request until cancelled
)

// fakeFleets is a Launcher whose fleets are in-process HTTP servers: the
// fake OpenAI server of fake_test.go plus /kvasir/replicas.
type fakeFleets struct {
	behave map[string]fleetBehaviour // by the fleet file's strategy directory

	mu         sync.Mutex
	running    int
	maxRunning int
	files      []string
	args       [][]string
	requests   int
	keys       map[string]int // requests by Authorization header
	started    chan struct{}  // receives when a fleet serves requests (fleetBlocks)
}

func (ff *fakeFleets) Launch(ctx context.Context, spec LaunchSpec, onListen func(Listening)) error {
	file, logDir := spec.File, spec.LogDir
	ff.mu.Lock()
	ff.running++
	ff.maxRunning = max(ff.maxRunning, ff.running)
	ff.files = append(ff.files, file)
	ff.args = append(ff.args, spec.Args)
	ff.mu.Unlock()
	defer func() {
		ff.mu.Lock()
		ff.running--
		ff.mu.Unlock()
	}()
	if filepath.Base(logDir) != "logs" || filepath.Dir(logDir) != filepath.Dir(file) {
		return errors.New("logs not next to the fleet file: " + logDir)
	}
	b := ff.behave[filepath.Base(filepath.Dir(file))]
	if b == fleetStartFails {
		return errors.New(`spec.routing.plugins[0].name: unknown plugin "nope"`)
	}
	ready := 1
	if b == fleetNeverReady {
		ready = 0
	}
	fake := &fakeServer{}
	if b == fleetAllFail {
		fake.fail = func(int) failure { return fail500 }
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /kvasir/replicas", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode([]local.RevisionStatus{{Service: "demo", Model: "demo", Revision: "demo-00001",
			Role: "unified", Desired: 1, Ready: ready}})
	})
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		ff.mu.Lock()
		ff.requests++
		if ff.keys == nil {
			ff.keys = map[string]int{}
		}
		ff.keys[r.Header.Get("Authorization")]++
		ff.mu.Unlock()
		if b == fleetBlocks {
			select {
			case ff.started <- struct{}{}:
			default:
			}
			<-r.Context().Done()
			return
		}
		fake.handle(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	onListen(Listening{API: ln.Addr().String(), Admin: ln.Addr().String()})
	<-ctx.Done()
	return srv.Close()
}

const runFleet = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim}
    scaling: {minScale: 1, maxScale: 1, initialScale: 1}
---
apiVersion: bench.kvasir.dev/v1alpha1
kind: Benchmark
metadata: {name: run-test}
spec:
  workload: {model: demo, input-len: 8, output-len: 5, num-prompts: 6, rate: 0, max-concurrency: 2, timeout: 10s}
  strategies:
    - {name: ok, plugins: [{name: random}]}
    - {name: start-fails, plugins: [{name: round-robin}]}
    - {name: never-ready}
    - {name: all-fail, plugins: [{name: least-request}]}
    - {name: ok-again, plugins: [{name: kv-cache-aware, weight: 3}, {name: least-request, weight: 2}]}
`

func TestCompareRunsEachStrategyOnItsOwnFleet(t *testing.T) {
	c, err := ParseComparison("run.yaml", []byte(runFleet))
	require.NoError(t, err)
	c.WarmupTimeout = 300 * time.Millisecond
	ff := &fakeFleets{behave: map[string]fleetBehaviour{
		"02-start-fails": fleetStartFails, "03-never-ready": fleetNeverReady, "04-all-fail": fleetAllFail,
	}}
	dir := t.TempDir()
	var progress bytes.Buffer
	rep, err := Compare(context.Background(), c, c.Strategies, CompareOptions{
		Launch: ff, Dir: dir, Progress: &progress, PollInterval: 10 * time.Millisecond,
	})
	require.NoError(t, err)
	t.Log(progress.String())
	assert.Equal(t, "run-test", rep.Benchmark)
	assert.Equal(t, 1, ff.maxRunning, "one fleet at a time")
	assert.Zero(t, ff.running, "every fleet stopped")
	assert.Len(t, ff.files, 5)
	assert.Equal(t, []string{"start-fails", "never-ready", "all-fail"}, rep.Failed())

	require.Len(t, rep.Results, 5)
	for i, name := range []string{"ok", "start-fails", "never-ready", "all-fail", "ok-again"} {
		assert.Equal(t, name, rep.Results[i].Strategy.Name)
	}
	for _, i := range []int{0, 4} {
		r := rep.Results[i]
		require.NoError(t, r.Err)
		require.NotNil(t, r.Result)
		assert.Equal(t, 6, r.Result.Completed)
		assert.Zero(t, r.Result.Errors)
		assert.Contains(t, r.Result.Target, "http://127.0.0.1:")
	}
	assert.Nil(t, rep.Results[1].Result)
	assert.ErrorContains(t, rep.Results[1].Err, `the fleet stopped: spec.routing.plugins[0].name: unknown plugin "nope"`)
	assert.Nil(t, rep.Results[2].Result)
	assert.ErrorContains(t, rep.Results[2].Err, "not ready within the warm-up timeout (spec.warmupTimeout): demo-00001 (unified): 0 of 1 replicas ready")
	require.NotNil(t, rep.Results[3].Result)
	assert.Equal(t, 6, rep.Results[3].Result.Errors)
	assert.ErrorContains(t, rep.Results[3].Err, "all 6 requests failed, e.g.: HTTP 500")

	// Each strategy's fleet file has its plugins.
	b, err := os.ReadFile(filepath.Join(dir, "05-ok-again", "fleet.yaml"))
	require.NoError(t, err)
	fleet, err := local.Load("fleet.yaml", b)
	require.NoError(t, err)
	assert.Equal(t, c.Strategies[4].Plugins, fleet[0].Spec.Routing.Plugins)
	b, err = os.ReadFile(filepath.Join(dir, "03-never-ready", "fleet.yaml"))
	require.NoError(t, err)
	fleet, err = local.Load("fleet.yaml", b)
	require.NoError(t, err)
	assert.Nil(t, fleet[0].Spec.Routing, "no plugins: the platform's default")

	assert.Contains(t, progress.String(), "[1/5] ok: fleet ready")
	assert.Contains(t, progress.String(), "[3/5] never-ready: FAILED")
}

func TestCompareStopsOnCancel(t *testing.T) {
	c, err := ParseComparison("run.yaml", []byte(runFleet))
	require.NoError(t, err)
	ff := &fakeFleets{behave: map[string]fleetBehaviour{"01-ok": fleetBlocks}, started: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-ff.started
		cancel()
	}()
	rep, err := Compare(ctx, c, c.Strategies, CompareOptions{Launch: ff, Dir: t.TempDir(), PollInterval: 10 * time.Millisecond})
	require.ErrorIs(t, err, context.Canceled)
	require.Len(t, rep.Results, 1, "the strategies after the cancelled one do not run")
	assert.ErrorIs(t, rep.Results[0].Err, context.Canceled)
	require.NotNil(t, rep.Results[0].Result, "the partial result is kept")
	assert.Zero(t, ff.running, "the fleet stopped")
	assert.Len(t, ff.files, 1)
}

func TestCompareOptionsRequired(t *testing.T) {
	c, err := ParseComparison("run.yaml", []byte(runFleet))
	require.NoError(t, err)
	_, err = Compare(context.Background(), c, c.Strategies, CompareOptions{Dir: t.TempDir()})
	require.Error(t, err)
	ff := &fakeFleets{}
	_, err = Compare(context.Background(), c, c.Strategies, CompareOptions{Launch: ff})
	require.Error(t, err)
}
