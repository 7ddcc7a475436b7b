package queueproxy

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

func TestParseEngineMetrics(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		want    stats.EngineStat
		wantErr string
	}{{
		name: "vLLM v1, two models summed",
		text: `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 3.0
vllm:num_requests_running{engine="0",model_name="b"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 4.0
vllm:num_requests_waiting{engine="0",model_name="b"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.5
vllm:kv_cache_usage_perc{engine="0",model_name="b"} 0.25
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="a"} 1000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="a"} 600.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",num_gpu_blocks="27000"} 1.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="",waiting_lora_adapters=""} 1.7e+09
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql, chat",waiting_lora_adapters="x"} 1.7000001e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="a"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="a"} 5.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="a"} 5.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="a"} 0.7
`,
		want: stats.EngineStat{
			Scraped: true, Running: 5, Waiting: 5, KVCacheUsage: 0.375,
			BlockSize: 16, NumGPUBlocks: 27000, PrefixCacheHits: 600, PrefixCacheQuery: 1000,
			LoRAAdapters: []string{"sql", "chat"},
		},
	}, {
		name: "older vLLM cache usage name",
		text: `# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.8
`,
		want: stats.EngineStat{Scraped: true, Running: 1, KVCacheUsage: 0.8},
	}, {
		name: "SGLang",
		text: `# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 2.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.42
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="m"} 0.31
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m"} 1234.0
`,
		want: stats.EngineStat{Scraped: true, Running: 7, Waiting: 2, KVCacheUsage: 0.42, PrefixCacheHitPct: 0.31},
	}, {
		name:    "no engine metrics",
		text:    "# TYPE go_goroutines gauge\ngo_goroutines 12\n",
		wantErr: "no known vLLM or SGLang metrics",
	}, {
		name:    "garbage",
		text:    "<html>502 Bad Gateway</html>\n",
		wantErr: "no known vLLM or SGLang metrics",
	}, {
		name:    "a family it reads, malformed",
		text:    "vllm:num_requests_running{engine=\"0\" 3\n",
		wantErr: "parse engine metrics",
	}, {
		// Only the families read reach the parser: a malformed line of
		// another family no longer fails the scrape.
		name: "another family malformed",
		text: "python_gc_objects_collected_total{generation=\"0\" 3\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2\n",
		want: stats.EngineStat{Scraped: true, Running: 2},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseEngineMetrics(strings.NewReader(tc.text))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				assert.False(t, got.Scraped)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestEngineMetricsNotFiniteOrHuge: NaN and ±Inf are valid samples, and
// once made statMessage panic (JSON has no NaN), taking the queue-proxy
// down at its next report; they read as 0 now. Block labels too large for
// the KV model's arithmetic read as unknown.
func TestEngineMetricsNotFiniteOrHuge(t *testing.T) {
	es, err := parseEngineMetrics(strings.NewReader("sglang:cache_hit_rate NaN\nvllm:num_requests_waiting +Inf\n" +
		"vllm:kv_cache_usage_perc{a=\"1\"} -1e308\nvllm:kv_cache_usage_perc{a=\"2\"} -1e308\n" +
		"vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"9223372036854775807\"} 1\n"))
	require.NoError(t, err)
	assert.Equal(t, stats.EngineStat{Scraped: true, BlockSize: 16}, es)
	require.NotPanics(t, func() { statMessage(stats.Stat{Engine: es}) })
}

// TestParseEngineMetricsHuge: a large exposition (an engine with many
// label sets, up to the scrape's bound) reads the few families it needs.
func TestParseEngineMetricsHuge(t *testing.T) {
	var b strings.Builder
	b.WriteString("# TYPE vllm:time_to_first_token_seconds histogram\n")
	for i := 0; b.Len() < maxMetricsBytes/4; i++ {
		fmt.Fprintf(&b, "vllm:time_to_first_token_seconds_bucket{le=\"%d\",model_name=\"m%d\"} 1\n", i, i)
	}
	b.WriteString("vllm:num_requests_running{model_name=\"m\"} 7\n")
	got, err := parseEngineMetrics(io.LimitReader(strings.NewReader(b.String()), maxMetricsBytes))
	require.NoError(t, err)
	assert.Equal(t, stats.EngineStat{Scraped: true, Running: 7}, got)
}

// SGLang's KV cache shape, in each form it has had, and vLLM's beside it,
// from expositions in testdata/metrics.
func TestParseEngineMetricsCacheShapeFixtures(t *testing.T) {
	for _, tc := range []struct {
		file string
		want stats.EngineStat
	}{{
		file: "sglang-cache-config-info.txt", // before v0.5.11
		want: stats.EngineStat{Scraped: true, Running: 3, Waiting: 1, KVCacheUsage: 0.25, PrefixCacheHitPct: 0.5,
			BlockSize: 64, NumGPUBlocks: 8192},
	}, {
		file: "sglang-page-gauges.txt", // v0.5.11 on, two DP ranks
		want: stats.EngineStat{Scraped: true, Running: 3, Waiting: 4, KVCacheUsage: 0.375, BlockSize: 32, NumGPUBlocks: 8192},
	}, {
		file: "vllm-and-sglang.txt",
		want: stats.EngineStat{Scraped: true, Running: 1, BlockSize: 16, NumGPUBlocks: 2000},
	}} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", "metrics", tc.file))
			require.NoError(t, err)
			defer f.Close()
			text, err := io.ReadAll(f)
			require.NoError(t, err)
			got, err := parseEngineMetrics(bytes.NewReader(text))
			require.NoError(t, err)
			whole, err := engineStatOf(text)
			require.NoError(t, err)
			require.Equal(t, whole, got, "only the families read reach the parser; they read the same")
			assert.Equal(t, tc.want, got)
		})
	}
}

// Values that are not a count (negative, zero, NaN, infinite, fractional,
// too large for the KV model's arithmetic, not a number) are ignored: the
// shape is unknown (0), or the next form that has a valid one gives it.
func TestParseEngineMetricsCacheShapeGarbage(t *testing.T) {
	for _, tc := range []struct {
		name      string
		text      string
		bs, count int
	}{
		{"info: negative", `sglang:cache_config_info{page_size="-64",num_pages="-1"} 1` + "\n", 0, 0},
		{"info: not numbers", `sglang:cache_config_info{page_size="NaN",num_pages="lots"} 1` + "\n", 0, 0},
		{"info: huge", `sglang:cache_config_info{page_size="99999999999999999999",num_pages="9223372036854775807"} 1` + "\n", 0, 0},
		{"info: count huge", `sglang:cache_config_info{page_size="64",num_pages="4294967296"} 1` + "\n", 64, 0},
		{"info: no labels", "sglang:cache_config_info 1\n", 0, 0},
		{"gauges: NaN", "sglang:page_size NaN\nsglang:num_pages NaN\n", 0, 0},
		{"gauges: infinite", "sglang:page_size +Inf\nsglang:num_pages -Inf\n", 0, 0},
		{"gauges: negative", "sglang:page_size -16\nsglang:num_pages -100\n", 0, 0},
		{"gauges: zero", "sglang:page_size 0\nsglang:num_pages 0\n", 0, 0},
		{"gauges: fractional", "sglang:page_size 16.5\nsglang:num_pages 100.25\n", 0, 0},
		{"gauges: huge", "sglang:page_size 1e300\nsglang:num_pages 1e300\n", 0, 0},
		{"gauges: count garbage", "sglang:page_size 16\nsglang:num_pages NaN\n", 16, 0},
		{"gauges: count alone", "sglang:num_pages 100\n", 0, 0},
		{"gauges: first valid sample", "sglang:page_size{dp_rank=\"0\"} -1\nsglang:page_size{dp_rank=\"1\"} 16\nsglang:num_pages{dp_rank=\"0\"} NaN\nsglang:num_pages{dp_rank=\"1\"} 10\n", 16, 10},
		{"garbage info, valid gauges", "sglang:cache_config_info{page_size=\"x\",num_pages=\"1\"} 1\nsglang:page_size 8\nsglang:num_pages 10\n", 8, 10},
		{"info before gauges", "sglang:cache_config_info{page_size=\"64\",num_pages=\"100\"} 1\nsglang:page_size 8\nsglang:num_pages 10\n", 64, 100},
		{"vLLM garbage, SGLang valid", "vllm:cache_config_info{block_size=\"-16\",num_gpu_blocks=\"5\"} 1\nsglang:page_size 8\nsglang:num_pages 10\n", 8, 10},
		{"vLLM valid, SGLang garbage", "vllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"5\"} 1\nsglang:page_size NaN\n", 16, 5},
		{"vLLM count alone, as before", "vllm:cache_config_info{num_gpu_blocks=\"5\"} 1\n", 0, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es, err := parseEngineMetrics(strings.NewReader(tc.text))
			require.NoError(t, err, "the names are known: the scrape succeeds")
			assert.True(t, es.Scraped)
			assert.Equal(t, tc.bs, es.BlockSize, "block size")
			assert.Equal(t, tc.count, es.NumGPUBlocks, "blocks")
			require.NotPanics(t, func() { statMessage(stats.Stat{Engine: es}) })
		})
	}
}
