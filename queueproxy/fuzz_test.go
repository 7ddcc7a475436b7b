package queueproxy

import (
	"log/slog"
	"math"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// FuzzEngineMetrics checks the queue-proxy's reading of an engine's
// /metrics on any text: no panic; what it reads travels on the stats
// stream (statMessage, which panics on a value JSON cannot carry) and
// reads back the same (stats.Decode); and the KV model takes the block
// size and count it reports without going wrong. `go test` runs the seeds
// (f.Add and testdata/fuzz/FuzzEngineMetrics/); `make fuzz` explores.
func FuzzEngineMetrics(f *testing.F) {
	for _, s := range []string{
		"vllm:num_requests_running{engine=\"0\",model_name=\"a\"} 3.0\nvllm:num_requests_waiting 4\n" +
			"vllm:kv_cache_usage_perc{model_name=\"a\"} 0.5\nvllm:kv_cache_usage_perc{model_name=\"b\"} 0.25\n" +
			"vllm:prefix_cache_queries_total 1000\nvllm:prefix_cache_hits_total 600\n",
		"# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{block_size=\"16\",num_gpu_blocks=\"2000\"} 1.0\n",
		"vllm:lora_requests_info{running_lora_adapters=\"a, b\",waiting_lora_adapters=\"\"} 1.7e9\n" +
			"vllm:lora_requests_info{running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.6e9\n",
		"sglang:num_running_reqs 1\nsglang:num_queue_reqs 2\nsglang:token_usage 0.1\nsglang:cache_hit_rate 0.4\n",
		"# TYPE vllm:num_requests_running counter\nvllm:num_requests_running 1\n",
		"vllm:num_requests_waiting NaN\n", "vllm:num_requests_running +Inf\n", "vllm:kv_cache_usage_perc -1e308\nvllm:kv_cache_usage_perc -1e308\n",
		"vllm:cache_config_info{block_size=\"-16\",num_gpu_blocks=\"9223372036854775807\"} 1\n",
		"other_metric 1\n", "not metrics at all", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		es, err := parseEngineMetrics(strings.NewReader(text))
		// Filtering the lines changes nothing the whole text parses to.
		if whole, werr := engineStatOf([]byte(text)); werr == nil {
			require.NoError(t, err, "the whole text parsed")
			require.Equal(t, whole, es)
		}
		if err != nil {
			require.Equal(t, stats.EngineStat{}, es)
			return
		}
		require.True(t, es.Scraped)
		for _, v := range []float64{es.Running, es.Waiting, es.KVCacheUsage, es.PrefixCacheHits, es.PrefixCacheQuery, es.PrefixCacheHitPct} {
			require.False(t, math.IsNaN(v) || math.IsInf(v, 0), "%+v", es)
		}
		require.True(t, es.BlockSize >= 0 && es.BlockSize < maxCount, "%+v", es)
		require.True(t, es.NumGPUBlocks >= 0 && es.NumGPUBlocks < maxCount, "%+v", es)
		msg := statMessage(stats.Stat{Pod: "p", Engine: es})
		m, ok, err := stats.Decode(msg)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, es, normalizeEmpty(m.Stat.Engine))

		h := newHub(slog.New(slog.DiscardHandler))
		kv := newKVModel(Config{PodName: "p"}, h, prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}), slog.New(slog.DiscardHandler))
		kv.configure(es.BlockSize, es.NumGPUBlocks, false)
		kv.mu.Lock()
		defer kv.mu.Unlock()
		require.GreaterOrEqual(t, kv.capacity, 0, "%+v", es)
		require.Positive(t, kv.limit, "%+v", es)
		require.LessOrEqual(t, kv.limit, MaxKVCapacityBlocks, "%+v", es)
	})
}

// normalizeEmpty gives an empty adapter list the nil that parseEngineMetrics
// returns for none (omitempty drops both on the wire).
func normalizeEmpty(es stats.EngineStat) stats.EngineStat {
	if len(es.LoRAAdapters) == 0 {
		es.LoRAAdapters = nil
	}
	return es
}
