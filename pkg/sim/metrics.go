package sim

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Histogram buckets of vLLM's own metrics (vllm/v1/metrics/loggers.py); ITL
// uses those of vllm:time_per_output_token_seconds.
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
		0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
		1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	requestBuckets = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
		30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
)

// metrics are the engine's Prometheus metrics, under vLLM's names, in a
// registry of their own. Latencies are in simulated seconds.
type metrics struct {
	reg *prometheus.Registry

	running, waiting, kvUsage, gpuUsage                       prometheus.Gauge
	prefixHits, prefixQueries, promptTokens, generationTokens prometheus.Counter
	success                                                   map[string]prometheus.Counter // fixed at construction
	ttft, itl, e2e, queueTime                                 prometheus.Observer
	lora                                                      *prometheus.GaugeVec // nil without LoRA
	maxLoRA                                                   string
	kvEventsDropped                                           prometheus.Counter // nil without KV events
}

func newMetrics(cfg Config) *metrics {
	reg := prometheus.NewRegistry()
	model := prometheus.Labels{"model_name": cfg.Model}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: model})
		reg.MustRegister(g)
		return g
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: model})
		reg.MustRegister(c)
		return c
	}
	histogram := func(name, help string, buckets []float64) prometheus.Observer {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets, ConstLabels: model})
		reg.MustRegister(h)
		return h
	}
	m := &metrics{
		reg:              reg,
		running:          gauge("vllm:num_requests_running", "Number of requests in model execution batches."),
		waiting:          gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
		kvUsage:          gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
		gpuUsage:         gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage (deprecated alias of vllm:kv_cache_usage_perc)."),
		prefixHits:       counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in number of queried tokens."),
		prefixQueries:    counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in number of queried tokens."),
		promptTokens:     counter("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
		generationTokens: counter("vllm:generation_tokens_total", "Number of generation tokens processed."),
		ttft:             histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets),
		itl:              histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets),
		e2e:              histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", requestBuckets),
		queueTime:        histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", requestBuckets),
		success:          map[string]prometheus.Counter{},
	}
	successVec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vllm:request_success_total", Help: "Count of successfully processed requests.", ConstLabels: model,
	}, []string{"finished_reason"})
	reg.MustRegister(successVec)
	for _, r := range []string{reasonStop, reasonLength, reasonAbort} {
		m.success[r] = successVec.WithLabelValues(r)
	}

	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vllm:cache_config_info", Help: "Information of the LLMEngine CacheConfig.", ConstLabels: model,
	}, []string{"block_size", "num_gpu_blocks"})
	reg.MustRegister(info)
	info.WithLabelValues(strconv.Itoa(cfg.BlockSize), strconv.Itoa(cfg.engineKVBlocks())).Set(1)

	if cfg.KVEventsEndpoint != "" {
		m.kvEventsDropped = counter("kvasir_sim_kv_events_dropped_total",
			"KV-cache events dropped because their publisher did not keep up (not a vLLM metric).")
	}

	if cfg.LoRAEnabled() {
		m.maxLoRA = strconv.Itoa(cfg.MaxLoRAs)
		m.lora = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "vllm:lora_requests_info", Help: "Running stats on lora requests.",
		}, []string{"running_lora_adapters", "waiting_lora_adapters", "max_lora"})
		reg.MustRegister(m.lora)
		m.setLoRAInfo("", "")
	}
	return m
}

// setLoRAInfo replaces the single series of vllm:lora_requests_info; as in
// vLLM its value is the time of the update.
func (m *metrics) setLoRAInfo(running, waiting string) {
	if m.lora == nil {
		return
	}
	m.lora.Reset()
	m.lora.WithLabelValues(running, waiting, m.maxLoRA).Set(float64(time.Now().UnixNano()) / 1e9)
}
