package queueproxy

import (
	"bytes"
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
//
// Only the lines of the families it reads reach the Prometheus parser
// (engineMetricLines): an engine exports many more (histograms, process
// and Python metrics), and the parser builds all it is given, which on the
// one P of a queue-proxy delays the requests behind it.
func parseEngineMetrics(r io.Reader) (stats.EngineStat, error) {
	text, err := io.ReadAll(r)
	if err != nil {
		return stats.EngineStat{}, fmt.Errorf("read engine metrics: %w", err)
	}
	return engineStatOf(engineMetricLines(make([]byte, 0, 2<<10), text))
}

// engineMetricNames are the metric families engineStatOf reads: a family
// it reads that is not listed here never reaches it.
var engineMetricNames = map[string]bool{
	"vllm:num_requests_running": true, "sglang:num_running_reqs": true,
	"vllm:num_requests_waiting": true, "sglang:num_queue_reqs": true,
	"vllm:kv_cache_usage_perc": true, "vllm:gpu_cache_usage_perc": true, "sglang:token_usage": true,
	"vllm:prefix_cache_hits_total": true, "vllm:prefix_cache_hits": true,
	"vllm:prefix_cache_queries_total": true, "vllm:prefix_cache_queries": true,
	"vllm:cache_config_info": true, "sglang:cache_config_info": true,
	"sglang:page_size": true, "sglang:num_pages": true,
	"vllm:lora_requests_info": true, "sglang:cache_hit_rate": true,
}

// engineMetricLines appends to dst the lines of text, Prometheus text
// exposition, that belong to the families engineStatOf reads: their samples
// and their HELP and TYPE lines. The parser names a family by these lines
// alone, so it reads the kept lines as it would have read them in the
// whole text. A line whose name is quoted (UTF-8 names) is kept.
func engineMetricLines(dst, text []byte) []byte {
	for len(text) > 0 {
		line := text
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i+1], text[i+1:]
		} else {
			text = nil
		}
		if keepMetricLine(line) {
			dst = append(dst, line...)
		}
	}
	return dst
}

// keepMetricLine reports whether engineMetricLines keeps line.
func keepMetricLine(line []byte) bool {
	rest := bytes.TrimLeft(line, " \t")
	if len(rest) == 0 {
		return false
	}
	if rest[0] == '#' {
		f := bytes.Fields(rest[1:])
		if len(f) < 2 || (string(f[0]) != "HELP" && string(f[0]) != "TYPE") {
			return false // a comment, or nothing the parser reads
		}
		return f[1][0] == '"' || engineMetricNames[string(f[1])]
	}
	if rest[0] == '{' || rest[0] == '"' {
		return true
	}
	// The parser's unquoted name: the longest run of name characters.
	end := 0
	for end < len(rest) && isMetricNameByte(rest[end]) {
		end++
	}
	return engineMetricNames[string(rest[:end])]
}

func isMetricNameByte(b byte) bool {
	return b == '_' || b == ':' || ('a' <= b && b <= 'z') || ('A' <= b && b <= 'Z') || ('0' <= b && b <= '9')
}

// engineStatOf parses Prometheus text exposition into an EngineStat. Every
// family it reads must be in engineMetricNames.
func engineStatOf(text []byte) (stats.EngineStat, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
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
	es.BlockSize, es.NumGPUBlocks = cacheShape(fams, &found)
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

// cacheShape reads the engine's KV cache shape: tokens a block (a page,
// for SGLang) and blocks in all, 0 for unknown. The first form that gives a
// valid block size wins, its count with it:
//
//   - vLLM: labels block_size and num_gpu_blocks of vllm:cache_config_info;
//   - SGLang before v0.5.11: labels page_size and num_pages of
//     sglang:cache_config_info;
//   - SGLang since: the gauges sglang:page_size and sglang:num_pages (one
//     sample per scheduler: the first valid one counts).
//
// found is set when any of these names appears.
func cacheShape(fams map[string]*dto.MetricFamily, found *bool) (blockSize, blocks int) {
	info := func(name, sizeLabel, countLabel string) (int, int) {
		m := firstMetric(fams[name])
		if m == nil {
			return 0, 0
		}
		*found = true
		return count(label(m, sizeLabel)), count(label(m, countLabel))
	}
	vBS, vN := info("vllm:cache_config_info", "block_size", "num_gpu_blocks")
	if vBS > 0 {
		return vBS, vN
	}
	if bs, n := info("sglang:cache_config_info", "page_size", "num_pages"); bs > 0 {
		return bs, n
	}
	if bs, n := gaugeCount(fams["sglang:page_size"], found), gaugeCount(fams["sglang:num_pages"], found); bs > 0 {
		return bs, n
	}
	return 0, vN // no valid block size anywhere: vLLM's count alone, as before
}

// gaugeCount reads a metric whose value is a count (a block size, a number
// of blocks): the first sample that is a whole number in 1..maxCount-1; 0
// when none is (absent, negative, NaN, fractional, huge).
func gaugeCount(mf *dto.MetricFamily, found *bool) int {
	if mf == nil {
		return 0
	}
	*found = true
	for _, m := range mf.GetMetric() {
		if v := value(m); v >= 1 && v < maxCount && v == math.Trunc(v) {
			return int(v)
		}
	}
	return 0
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

// scrapeEngine reads the engine once: its metrics (the error is theirs)
// and its model list (scrapeModels), whatever became of the metrics: a
// custom engine may serve either without the other.
func (p *Proxy) scrapeEngine(ctx context.Context) (stats.EngineStat, error) {
	es, err := p.scrapeMetrics(ctx)
	if ctx.Err() == nil {
		p.scrapeModels(ctx, &es)
	}
	return es, err
}

// scrapeMetrics fetches and parses the engine's metrics once.
func (p *Proxy) scrapeMetrics(ctx context.Context) (stats.EngineStat, error) {
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
