package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// binDir holds the kvasir and activator binaries, built once by TestMain
// (with the race detector when the test has it).
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvasir-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "github.com/kvasir-serving/kvasir/cmd/kvasir",
		"github.com/kvasir-serving/kvasir/cmd/activator")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kvasir and activator:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestFaultsUnderLoad is the short version of the chaos run: each fault
// once, on a short steady load of streamed and non-streamed requests, with
// the goals of issue 11 asserted request by request. Nothing waits on the
// clock: phases are counted in requests and every wait polls the fleet
// (replicas, engine metrics, process liveness) with a bound that fails.
func TestFaultsUnderLoad(t *testing.T) {
	ctx := context.Background()
	const clients = 9
	dir := t.TempDir()
	opts := Options{Bin: binDir, Dir: dir, Replicas: 3, Activators: 3, TimeScale: 0.25,
		Load:      loadConfig{Concurrency: clients, StreamFraction: 0.5, MaxTokens: 24, Deadline: 60 * time.Second},
		MinBefore: clients, MinAfter: clients, Timeout: 2 * time.Minute, Logf: t.Logf}
	h, err := newHarness(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, h.close(), "every process stops and none is left behind")
		if t.Failed() {
			t.Logf("kvasir local's log:\n%s", tail(filepath.Join(dir, "kvasir-local.log"), 80))
		}
	})

	var results []*phaseResult
	for _, f := range allFaults() {
		ok := t.Run(strings.ReplaceAll(f.String(), " ", "_"), func(t *testing.T) {
			res, err := h.phase(ctx, f)
			require.NoError(t, err)
			results = append(results, res)
			tl := res.tally()
			require.GreaterOrEqual(t, res.hit, 1, "the fault hit requests in flight")
			require.GreaterOrEqual(t, tl.started, 2*clients, "the load ran before and after the fault")
			assert.Zero(t, tl.hangs, "no request hangs")
			switch {
			case f.graceful():
				assert.Equal(t, tl.started, tl.ok, "a drain loses no request: %v", tl.reasons)
				if f.target == targetActivator {
					assert.True(t, res.unreadyFirst, "a draining activator fails its readiness while it still accepts, "+
						"so that the Service removes it before its listener closes")
				}
			case f.target == targetActivator:
				for _, rec := range res.records {
					if rec.outcome != outcomeOK {
						assert.Equal(t, res.victimIndex, rec.target, "only the killed activator's requests fail: %s", res.describe(rec))
						assert.True(t, rec.inFlightAt(res.kill, res.dead), "only requests in flight at the kill fail: %s", res.describe(rec))
					}
				}
				assert.Positive(t, tl.rerouted, "requests that found the killed activator gone went to another one")
			default:
				assert.Zero(t, tl.failedPlain, "every non-streamed request is retried and succeeds: %v", tl.reasons)
				assert.Zero(t, tl.failedStreamed, "every broken stream ends with an error event: %v", tl.reasons)
				assert.Positive(t, float64(tl.errorEvents)+res.retries,
					"the fault broke streams or made the activators retry (it hit the data path)")
			}
			assert.Empty(t, res.violations(), "the goal: %s", f.goal())
		})
		if !ok {
			break // the fleet may not be whole: later phases would prove nothing
		}
	}
	var table strings.Builder
	writeTable(&table, results)
	t.Logf("\n%s", table.String())
}
