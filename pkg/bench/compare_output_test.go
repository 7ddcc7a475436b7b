package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// resultFields are the fields every measured entry of a compare report has
// (the list; the Result's other fields come along).
var resultFields = []string{"completed", "errors", "duration_s", "throughput_rps", "output_tokens_per_s",
	"ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_mean_s", "e2e_mean_s", "e2e_p99_s", "cache_hit_ratio"}

func testReport() *Report {
	ms := time.Millisecond
	ok := func(ttft time.Duration) sample {
		return sample{outcome: outcomeOK, streamed: true, ttft: ttft, e2e: 4 * ttft, itl: []time.Duration{ms}, chunks: 2,
			usage: true, prompt: 100, cached: 50, output: 2}
	}
	cfg := DefaultConfig()
	fast := summarize(cfg, []sample{ok(10 * ms), ok(10 * ms), ok(10 * ms), ok(10 * ms)}, time.Second)
	slow := summarize(cfg, []sample{ok(40 * ms), ok(40 * ms), {outcome: outcomeError, errMsg: "HTTP 503"}}, time.Second)
	failed := summarize(cfg, []sample{{outcome: outcomeError, errMsg: "HTTP 500"}}, time.Second)
	return &Report{Benchmark: "b", Results: []StrategyResult{
		{Strategy: Strategy{Name: "random", Plugins: []v1alpha1.RoutingPlugin{{Name: "random"}}}, Result: slow},
		{Strategy: Strategy{Name: "kv", Plugins: []v1alpha1.RoutingPlugin{{Name: "kv-cache-aware", Weight: 3}}}, Result: fast},
		{Strategy: Strategy{Name: "broken"}, Err: errors.New("the fleet stopped: boom")},
		{Strategy: Strategy{Name: "all-fail"}, Result: failed, Err: errors.New("all 1 requests failed, e.g.: HTTP 500")},
	}}
}

func TestReportJSON(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, testReport().WriteJSON(&buf))
	var out struct {
		Benchmark string           `json:"benchmark"`
		Results   []map[string]any `json:"results"`
	}
	dec := json.NewDecoder(bytes.NewReader(buf.Bytes()))
	dec.UseNumber()
	require.NoError(t, dec.Decode(&out))
	assert.Equal(t, "b", out.Benchmark)
	require.Len(t, out.Results, 4)

	// A measured entry: the strategy next to the Result's fields, flattened.
	e := out.Results[1]
	assert.Equal(t, "kv", e["strategy"])
	assert.Equal(t, []any{map[string]any{"name": "kv-cache-aware", "weight": json.Number("3")}}, e["plugins"])
	for _, f := range resultFields {
		assert.Contains(t, e, f)
	}
	var whole map[string]any
	b, err := json.Marshal(testReport().Results[1].Result)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &whole))
	for f := range whole {
		assert.Contains(t, e, f, "every field of the Result")
	}
	assert.NotContains(t, e, "error")
	assert.Equal(t, json.Number("4"), e["completed"])
	assert.Equal(t, json.Number("4"), e["throughput_rps"])
	assert.Equal(t, json.Number("0.5"), e["cache_hit_ratio"])
	assert.Equal(t, json.Number("0.01"), e["ttft_mean_s"])

	// A strategy that never ran: its name, plugins and error only.
	e = out.Results[2]
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	assert.Equal(t, []string{"error", "plugins", "strategy"}, keys)
	assert.Equal(t, "the fleet stopped: boom", e["error"])
	assert.Equal(t, []any{}, e["plugins"])

	// A strategy that ran and failed: both.
	e = out.Results[3]
	assert.Equal(t, json.Number("1"), e["errors"])
	assert.Equal(t, "all 1 requests failed, e.g.: HTTP 500", e["error"])

	// No results.
	buf.Reset()
	require.NoError(t, (&Report{Benchmark: "x"}).WriteJSON(&buf))
	assert.JSONEq(t, `{"benchmark": "x", "results": []}`, buf.String())
}

func TestReportTable(t *testing.T) {
	var buf bytes.Buffer
	testReport().WriteTable(&buf)
	out := buf.String()
	t.Log("\n" + out)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.GreaterOrEqual(t, len(lines), 5)
	assert.Equal(t, []string{"strategy", "completed", "errors", "throughput_rps", "output_tokens_per_s", "ttft_mean_s",
		"ttft_p99_s", "e2e_mean_s", "cache_hit_ratio", "throughput_x", "ttft_mean_x"}, strings.Fields(lines[0]))
	assert.Equal(t, []string{"random", "2", "1", "2.00", "4.0", "0.0400", "0.0400", "0.1600", "0.5000", "1.00x", "1.00x"},
		strings.Fields(lines[1]))
	assert.Equal(t, []string{"kv", "4", "0", "4.00", "8.0", "0.0100", "0.0100", "0.0400", "0.5000", "2.00x", "0.25x"},
		strings.Fields(lines[2]))
	assert.Equal(t, []string{"broken", "(failed)", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"}, strings.Fields(lines[3]))
	assert.Equal(t, []string{"all-fail", "(failed)", "0", "1", "0.00", "0.0", "0.0000", "0.0000", "0.0000", "0.0000", "-", "-"},
		strings.Fields(lines[4]))
	assert.Contains(t, out, "ratio to random's")
	assert.Contains(t, out, "broken failed: the fleet stopped: boom\n")
	// Columns line up: every row is as wide as the header.
	for _, l := range lines[1:5] {
		assert.Len(t, l, len(lines[0]))
	}

	// A failed first strategy: no ratios.
	rep := testReport()
	rep.Results = rep.Results[2:]
	buf.Reset()
	rep.WriteTable(&buf)
	assert.NotContains(t, buf.String(), "ratio to")
}
