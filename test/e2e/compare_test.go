package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
)

// TestBenchCompareSmoke runs `kvasir bench compare` on a tiny file (one
// zero-latency replica, a handful of requests, two strategies) and checks
// the shape of what it reports, not the speed.
func TestBenchCompareSmoke(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "compare.json")
	logs := filepath.Join(dir, "logs")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kvasirBin, "bench", "compare", "-f", "testdata/bench-compare.yaml",
		"--json", out, "--log-dir", logs)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = process.DieWithParent(nil)
	start := time.Now()
	err := cmd.Run()
	t.Logf("kvasir bench compare took %v\nstdout:\n%s\nstderr:\n%s", time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	require.NoError(t, err)

	b, err := os.ReadFile(out)
	require.NoError(t, err)
	var rep struct {
		Benchmark string           `json:"benchmark"`
		Results   []map[string]any `json:"results"`
	}
	require.NoError(t, json.Unmarshal(b, &rep), "%s", b)
	assert.Equal(t, "smoke", rep.Benchmark)
	require.Len(t, rep.Results, 2, "one result per strategy")
	for i, name := range []string{"least-request", "random"} {
		e := rep.Results[i]
		assert.Equal(t, name, e["strategy"])
		for _, f := range []string{"completed", "errors", "duration_s", "throughput_rps", "output_tokens_per_s",
			"ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_mean_s", "e2e_mean_s", "e2e_p99_s", "cache_hit_ratio"} {
			assert.Contains(t, e, f, "strategy %s", name)
		}
		assert.NotContains(t, e, "error", "strategy %s", name)
		assert.Equal(t, 8.0, e["completed"], "strategy %s: groups x prompts-per-group", name)
		assert.Equal(t, 0.0, e["errors"], "strategy %s", name)
		assert.Positive(t, e["throughput_rps"], "strategy %s", name)
		assert.Positive(t, e["ttft_mean_s"], "strategy %s", name)
		// Each strategy ran on its own fleet with its plugins.
		fleet, err := os.ReadFile(filepath.Join(logs, []string{"01-least-request", "02-random"}[i], "fleet.yaml"))
		require.NoError(t, err)
		assert.Contains(t, string(fleet), "name: "+name)
	}

	// The table: a header and one row per strategy.
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	require.GreaterOrEqual(t, len(lines), 3)
	assert.True(t, strings.HasPrefix(lines[0], "strategy "), lines[0])
	assert.True(t, strings.HasPrefix(lines[1], "least-request "), lines[1])
	assert.True(t, strings.HasPrefix(lines[2], "random "), lines[2])
}

// A file error is reported before anything runs, naming the field.
func TestBenchCompareBadFile(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("testdata/bench-compare.yaml")
	require.NoError(t, err)
	file := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(file, bytes.Replace(data, []byte("    groups: 2\n"), []byte("    groups: 2\n    target: http://x\n"), 1), 0o644))
	cmd := exec.Command(kvasirBin, "bench", "compare", "-f", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 1, exit.ExitCode())
	assert.Contains(t, stderr.String(), "document 2 (Benchmark \"smoke\"): spec.workload.target: must not be set")

	cmd = exec.Command(kvasirBin, "bench", "compare", "-f", "testdata/bench-compare.yaml", "--only", "oracle")
	stderr.Reset()
	cmd.Stderr = &stderr
	err = cmd.Run()
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 2, exit.ExitCode())
	assert.Contains(t, stderr.String(), `--only: no strategy "oracle"`)
}
