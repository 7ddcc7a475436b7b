package queueproxy

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the queue-proxy's own Prometheus metrics, on a per-instance
// registry served at /kvasir/metrics.
type metrics struct {
	registry *prometheus.Registry

	requests         *prometheus.CounterVec
	codes            [600]atomic.Pointer[prometheus.Counter] // requests' children by code, once looked up
	errors           prometheus.Counter
	duration         prometheus.Histogram
	ttft             prometheus.Histogram
	itl              prometheus.Histogram
	promptTokens     prometheus.Counter
	cachedTokens     prometheus.Counter
	completionTokens prometheus.Counter
	kvCorrections    prometheus.Counter
	kvEvents         *prometheus.CounterVec
	kvEventsSkipped  *prometheus.CounterVec
	kvEventGaps      prometheus.Counter
	loraOps          *prometheus.CounterVec
}

const metricsNamespace, metricsSubsystem = "kvasir", "queueproxy"

func newMetrics(p *Proxy) *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help, Buckets: buckets,
		})
	}
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts(opts("requests_total",
			"Proxied requests by the status code sent to the client (499: client went away first).")), []string{"code"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts(opts("errors_total",
			"Proxied requests that ended in a 5xx or broke mid-response."))),
		duration: hist("request_duration_seconds", "Time from request arrival to the end of the response.",
			prometheus.ExponentialBucketsRange(0.005, 600, 20)),
		ttft: hist("ttft_seconds", "Time from request arrival to the first content event of a stream.",
			prometheus.ExponentialBucketsRange(0.01, 120, 16)),
		itl: hist("itl_seconds", "Gap between consecutive content events of a stream.",
			prometheus.ExponentialBucketsRange(0.001, 5, 16)),
		promptTokens: prometheus.NewCounter(prometheus.CounterOpts(opts("prompt_tokens_total",
			"Prompt tokens reported by the engine."))),
		cachedTokens: prometheus.NewCounter(prometheus.CounterOpts(opts("cached_tokens_total",
			"Prompt tokens served from the engine's prefix cache."))),
		completionTokens: prometheus.NewCounter(prometheus.CounterOpts(opts("completion_tokens_total",
			"Completion tokens reported by the engine."))),
		kvCorrections: prometheus.NewCounter(prometheus.CounterOpts(opts("kv_corrections_total",
			"Times the engine's cached_tokens showed the KV model held evicted blocks, which were then removed."))),
		kvEvents: prometheus.NewCounterVec(prometheus.CounterOpts(opts("kv_events_total",
			"KV-cache events received from the engine, by type (stored, removed, cleared).")), []string{"type"}),
		kvEventsSkipped: prometheus.NewCounterVec(prometheus.CounterOpts(opts("kv_events_skipped_blocks_total",
			"Blocks of the engine's BlockStored events not followed, by reason (unknown_parent, malformed, full).")), []string{"reason"}),
		loraOps: prometheus.NewCounterVec(prometheus.CounterOpts(opts("lora_operations_total",
			"LoRA adapters loaded or unloaded on the engine at run time, by op (load, unload) and result (ok, error).")), []string{"op", "result"}),
		kvEventGaps: prometheus.NewCounter(prometheus.CounterOpts(opts("kv_event_gaps_total",
			"Gaps in the sequence numbers of the engine's KV events (or restarts of its count); each empties the followed set, which is then learnt again."))),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts(name, help)), f)
	}
	boolGauge := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m.registry.MustRegister(
		m.requests, m.errors, m.duration, m.ttft, m.itl,
		m.promptTokens, m.cachedTokens, m.completionTokens, m.kvCorrections,
		m.kvEvents, m.kvEventsSkipped, m.kvEventGaps, m.loraOps,
		gauge("kv_model_blocks", "Prompt blocks the KV model believes (or the engine's KV events say) the engine holds in its prefix cache.",
			func() float64 { return float64(p.KVBlocks()) }),
		gauge("in_flight", "Requests being proxied to the engine now.", func() float64 { return float64(p.inFlight.Load()) }),
		gauge("queued", "Requests waiting for the concurrency limit.", func() float64 { return float64(p.queued()) }),
		gauge("ready", "1 when the engine is ready and the queue-proxy is not draining.", func() float64 { return boolGauge(p.health.Ready()) }),
		gauge("draining", "1 once draining started.", func() float64 { return boolGauge(p.health.Draining()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// requestsWithCode is the requests counter of a status code, looked up in
// the vector once per code (a lookup formats the code and hashes it).
func (m *metrics) requestsWithCode(code int) prometheus.Counter {
	if code < 0 || code >= len(m.codes) {
		return m.requests.WithLabelValues(strconv.Itoa(code))
	}
	if c := m.codes[code].Load(); c != nil {
		return *c
	}
	c := m.requests.WithLabelValues(strconv.Itoa(code))
	m.codes[code].Store(&c)
	return c
}
