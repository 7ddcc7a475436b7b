package queueproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// maxMetricsBytes bounds one engine metrics scrape.
const maxMetricsBytes = 16 << 20

// errNoEngineMetrics is returned when the exposition has none of the names
// this package knows.
var errNoEngineMetrics = errors.New("no known vLLM or SGLang metrics")

// parseEngineMetrics reads Prometheus text exposition from a vLLM or SGLang
// server into an EngineStat. Counts are summed across label sets (several
// model_name or engine labels); ratios (KV cache usage, SGLang hit rate) are
// averaged across them. Scraped is true on success.
func parseEngineMetrics(r io.Reader) (stats.EngineStat, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return stats.EngineStat{}, fmt.Errorf("parse engine metrics: %w", err)
	}
	var es stats.EngineStat
	found := false
	sum := func(names ...string) float64 {
		for _, n := range names {
			if mf, ok := fams[n]; ok {
				found = true
				var s float64
				for _, m := range mf.GetMetric() {
					s += value(m)
				}
				return finite(s) // a sum of huge samples overflows
			}
		}
		return 0
	}
	mean := func(names ...string) float64 {
		for _, n := range names {
			if mf, ok := fams[n]; ok && len(mf.GetMetric()) > 0 {
				found = true
				return sum(n) / float64(len(mf.GetMetric()))
			}
		}
		return 0
	}

	// vLLM.
	es.Running = sum("vllm:num_requests_running", "sglang:num_running_reqs")
	es.Waiting = sum("vllm:num_requests_waiting", "sglang:num_queue_reqs")
	es.KVCacheUsage = mean("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
	es.PrefixCacheHits = sum("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")
	es.PrefixCacheQuery = sum("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")
	if m := firstMetric(fams["vllm:cache_config_info"]); m != nil {
		found = true
		es.BlockSize = count(label(m, "block_size"))
		es.NumGPUBlocks = count(label(m, "num_gpu_blocks"))
	}
	if mf, ok := fams["vllm:lora_requests_info"]; ok {
		found = true
		es.LoRAAdapters = splitAdapters(label(latestMetric(mf), "running_lora_adapters"))
	}
	// SGLang.
	es.PrefixCacheHitPct = mean("sglang:cache_hit_rate")

	if !found {
		return stats.EngineStat{}, errNoEngineMetrics
	}
	es.Scraped = true
	return es, nil
}

// value is the sample of a gauge, counter or untyped metric.
func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return finite(m.Gauge.GetValue())
	case m.Counter != nil:
		return finite(m.Counter.GetValue())
	case m.Untyped != nil:
		return finite(m.Untyped.GetValue())
	}
	return 0
}

// finite reads NaN and ±Inf (valid samples in the exposition format) as 0:
// every stat must stay a number that JSON can carry, or the stats stream
// cannot be written (statMessage panics).
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// maxCount bounds a block size or count read from a label, so that the KV
// model's arithmetic on them (blocks × block size) cannot overflow.
const maxCount = 1 << 31

// count reads a label as a positive count; anything else (absent, not a
// number, not positive, maxCount or more) is 0: unknown.
func count(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n >= maxCount {
		return 0
	}
	return n
}

func firstMetric(mf *dto.MetricFamily) *dto.Metric {
	if mf == nil || len(mf.GetMetric()) == 0 {
		return nil
	}
	return mf.GetMetric()[0]
}

// latestMetric picks the sample with the largest value: vLLM's *_info gauges
// with changing labels carry the time they were set as value, and the
// Prometheus client keeps the stale label sets.
func latestMetric(mf *dto.MetricFamily) *dto.Metric {
	var best *dto.Metric
	for _, m := range mf.GetMetric() {
		if best == nil || value(m) > value(best) {
			best = m
		}
	}
	return best
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

func splitAdapters(s string) []string {
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// scrapeEngine fetches and parses the engine's metrics once.
func (p *Proxy) scrapeEngine(ctx context.Context) (stats.EngineStat, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ScrapeInterval)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.engineURL(p.cfg.EngineMetricsPath), nil)
	if err != nil {
		return stats.EngineStat{}, fmt.Errorf("build scrape request: %w", err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return stats.EngineStat{}, fmt.Errorf("scrape engine metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return stats.EngineStat{}, fmt.Errorf("scrape engine metrics: status %d", resp.StatusCode)
	}
	return parseEngineMetrics(io.LimitReader(resp.Body, maxMetricsBytes))
}
