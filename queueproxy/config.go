package queueproxy

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
)

// Config is everything a queue-proxy is told at start. Fill it with
// RegisterFlags (which also sets the defaults) and check it with Validate.
type Config struct {
	// Host is the address to listen on; empty means all interfaces.
	Host string
	// Port is the one port serving proxied traffic and /kvasir/; 0 picks a free port.
	Port int

	// EngineURL is the base URL of the engine.
	EngineURL string
	// EngineHealthPath answers 200 when the engine is ready.
	EngineHealthPath string
	// EngineMetricsPath serves the engine's Prometheus text.
	EngineMetricsPath string

	// PodName goes into every stats.Stat.
	PodName string

	// ContainerConcurrency limits requests proxied to the engine at once; 0 = unlimited.
	ContainerConcurrency int
	// QueueDepth bounds requests waiting for the limit; negative means
	// 10*ContainerConcurrency. Unused when ContainerConcurrency is 0.
	QueueDepth int

	// MaxBodyBytes bounds a proxied request's body, which is read whole
	// before it is sent (413 over it).
	MaxBodyBytes int64
	// MaxBufferedResponseBytes bounds a non-streaming completion response held
	// back until complete; a larger one is passed through as it arrives.
	MaxBufferedResponseBytes int64
	// RequestTimeout bounds one proxied request, queueing included.
	RequestTimeout time.Duration

	// ProbeInterval is the period of the background engine health probe.
	ProbeInterval time.Duration
	// ProbeTimeout bounds one engine health probe.
	ProbeTimeout time.Duration
	// StatsInterval is the period of stats messages to subscribers.
	StatsInterval time.Duration
	// ScrapeInterval is the period of engine metrics scrapes (also their timeout).
	ScrapeInterval time.Duration

	// DrainQuietPeriod is how long requests are still accepted after draining starts.
	DrainQuietPeriod time.Duration
	// DrainTimeout bounds the wait for in-flight requests after the quiet
	// period; 0 means RequestTimeout.
	DrainTimeout time.Duration

	// KVModel turns on the model of the engine's prefix cache (the prompt
	// blocks it holds), streamed to stats subscribers as KV events.
	KVModel bool
	// KVBlockSize, when positive, is the block size (tokens) the KV model
	// hashes prompts at, overriding the engine's vllm:cache_config_info
	// block_size; 0 takes the engine's. Without either nothing is modelled.
	KVBlockSize int
	// KVCapacityBlocks, when positive, is how many prompt blocks the engine's
	// cache holds at most, overriding vllm:cache_config_info num_gpu_blocks;
	// 0 takes the engine's (or, when it reports none, caps the model at
	// DefaultKVModelBlocks and reports the capacity as unknown).
	KVCapacityBlocks int
	// KVEventsEndpoint, when set, is the ZMQ endpoint of the engine's own
	// KV-cache events; the queue-proxy follows them instead of modelling
	// the cache (KVModel is then unused). Its keys are the token-chained
	// keys of pkg/prompt, for routers that tokenize as the engine does.
	KVEventsEndpoint string
	// KVEventsTopic is the topic prefix subscribed to ("" for all).
	KVEventsTopic string
	// KVEventsBind binds KVEventsEndpoint (the engine connects) instead of
	// connecting to it; a wildcard host is always bound.
	KVEventsBind bool
	// LoRAAdaptersFile, when set, is a file of the adapters the engine must
	// serve (LoRAFile, JSON), kept current by the runtime; the queue-proxy
	// loads and unloads adapters on its engine to match it.
	LoRAAdaptersFile string
	// LoRALoadPath and LoRAUnloadPath are the engine's endpoints for that.
	LoRALoadPath, LoRAUnloadPath string
	// KVFlushInterval is the most often KV deltas are sent: changes are
	// batched for this long.
	KVFlushInterval time.Duration

	// LogLevel is the minimum level logged by Main.
	LogLevel slog.Level

	// AdminAddr is where the operator endpoints listen (/metrics, /healthz
	// and Go's pprof), on net/http; empty (the default) is off. They are
	// unauthenticated and a profile costs CPU: bind them to loopback.
	AdminAddr string
	// Limits harden the listener against slow and hostile clients:
	// header and body read timeouts, a connection cap, and the memory
	// budget of request bodies held at once.
	Limits httpserver.Limits
}

// Defaults.
const (
	DefaultPort                     = 8012
	DefaultEngineURL                = "http://127.0.0.1:8000"
	DefaultMaxBodyBytes             = 32 << 20
	DefaultMaxBufferedResponseBytes = 32 << 20
	DefaultRequestTimeout           = 10 * time.Minute
	DefaultKVFlushInterval          = 20 * time.Millisecond
	// DefaultKVModelBlocks bounds the KV model when the engine's capacity is
	// unknown (no num_gpu_blocks and no --kv-capacity-blocks).
	DefaultKVModelBlocks = 1 << 16
	// MaxKVBlockSize and MaxKVCapacityBlocks bound --kv-block-size and
	// --kv-capacity-blocks (and the model's memory: about 100 bytes a block).
	MaxKVBlockSize      = 1 << 16
	MaxKVCapacityBlocks = 1 << 22
)

// RegisterFlags binds the config to flags on fs and sets the defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	host, _ := os.Hostname() // empty on failure; Validate names --pod-name then
	fs.StringVar(&c.Host, "host", "127.0.0.1", "address to listen on (empty: all interfaces)")
	fs.IntVar(&c.Port, "port", DefaultPort, "port serving proxied traffic and /kvasir/ (0: any free port)")
	fs.StringVar(&c.EngineURL, "engine-url", DefaultEngineURL, "base URL of the inference engine")
	fs.StringVar(&c.EngineHealthPath, "engine-health-path", "/health", "engine path answering 200 when ready")
	fs.StringVar(&c.EngineMetricsPath, "engine-metrics-path", "/metrics", "engine path serving Prometheus text")
	fs.StringVar(&c.PodName, "pod-name", host, "pod name reported in stats")
	fs.IntVar(&c.ContainerConcurrency, "container-concurrency", 0, "max requests proxied to the engine at once (0: unlimited)")
	fs.IntVar(&c.QueueDepth, "queue-depth", -1, "max requests waiting for --container-concurrency (negative: 10 x container-concurrency)")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", DefaultMaxBodyBytes, "max request body of a proxied request (413 over it)")
	fs.Int64Var(&c.MaxBufferedResponseBytes, "max-buffered-response-bytes", DefaultMaxBufferedResponseBytes, "max non-streaming completion response held until complete")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", DefaultRequestTimeout, "max duration of one proxied request, queueing included")
	fs.DurationVar(&c.ProbeInterval, "probe-interval", time.Second, "period of the background engine health probe")
	fs.DurationVar(&c.ProbeTimeout, "probe-timeout", time.Second, "timeout of one engine health probe")
	fs.DurationVar(&c.StatsInterval, "stats-interval", time.Second, "period of stats messages to subscribers")
	fs.DurationVar(&c.ScrapeInterval, "scrape-interval", time.Second, "period (and timeout) of engine metrics scrapes")
	fs.DurationVar(&c.DrainQuietPeriod, "drain-quiet-period", time.Second, "how long requests are still accepted once draining starts")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 0, "max wait for in-flight requests after the quiet period (0: --request-timeout)")
	fs.BoolVar(&c.KVModel, "kv-model", true, "model the engine's prefix cache and stream block changes to stats subscribers")
	fs.IntVar(&c.KVBlockSize, "kv-block-size", 0, "KV block size in tokens for the KV model (0: the engine's vllm:cache_config_info block_size)")
	fs.IntVar(&c.KVCapacityBlocks, "kv-capacity-blocks", 0, "prompt blocks the engine's cache holds (0: the engine's num_gpu_blocks)")
	fs.StringVar(&c.KVEventsEndpoint, "kv-events-endpoint", "", "ZMQ endpoint of the engine's KV-cache events, followed instead of modelling the cache (tcp://host:port; empty: model)")
	fs.StringVar(&c.KVEventsTopic, "kv-events-topic", "", "topic prefix of the engine's KV events")
	fs.BoolVar(&c.KVEventsBind, "kv-events-bind", false, "bind --kv-events-endpoint for the engine to connect to (wildcard hosts always bind)")
	fs.StringVar(&c.LoRAAdaptersFile, "lora-adapters-file", "", `file of the LoRA adapters the engine must serve ({"loraAdapters": [...]}), loaded and unloaded at run time to match (empty: none)`)
	fs.StringVar(&c.LoRALoadPath, "lora-load-path", "/v1/load_lora_adapter", "engine endpoint that loads a LoRA adapter")
	fs.StringVar(&c.LoRAUnloadPath, "lora-unload-path", "/v1/unload_lora_adapter", "engine endpoint that unloads a LoRA adapter")
	fs.DurationVar(&c.KVFlushInterval, "kv-flush-interval", DefaultKVFlushInterval, "KV model changes are batched and sent at most this often")
	fs.StringVar(&c.AdminAddr, "admin-addr", "", "address of the operator endpoints: /metrics, /healthz, /debug/pprof/ (off when empty; unauthenticated: bind to loopback)")
	c.Limits = httpserver.DefaultLimits()
	httpserver.RegisterFlags(fs, &c.Limits)
	c.LogLevel = slog.LevelInfo
	fs.TextVar(&c.LogLevel, "log-level", slog.LevelInfo, "minimum log level (debug, info, warn, error)")
}

// Validate reports every invalid field, naming its flag.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if c.Port < 0 || c.Port > 65535 {
		bad("port", "%d is not a TCP port", c.Port)
	}
	if u, err := url.Parse(c.EngineURL); err != nil {
		errs = append(errs, fmt.Errorf("--engine-url: %w", err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("engine-url", "%q is not an http(s) URL with a host", c.EngineURL)
	} else if u.RawQuery != "" || u.Fragment != "" {
		bad("engine-url", "%q must not have a query or fragment", c.EngineURL)
	}
	if !strings.HasPrefix(c.EngineHealthPath, "/") {
		bad("engine-health-path", "%q must start with /", c.EngineHealthPath)
	}
	if !strings.HasPrefix(c.EngineMetricsPath, "/") {
		bad("engine-metrics-path", "%q must start with /", c.EngineMetricsPath)
	}
	if c.PodName == "" {
		bad("pod-name", "must not be empty")
	}
	if c.ContainerConcurrency < 0 {
		bad("container-concurrency", "%d is negative", c.ContainerConcurrency)
	}
	if c.MaxBodyBytes <= 0 {
		bad("max-body-bytes", "%d must be positive", c.MaxBodyBytes)
	}
	if c.MaxBufferedResponseBytes <= 0 {
		bad("max-buffered-response-bytes", "%d must be positive", c.MaxBufferedResponseBytes)
	}
	if c.KVBlockSize < 0 || c.KVBlockSize > MaxKVBlockSize {
		bad("kv-block-size", "%d is not in 0..%d", c.KVBlockSize, MaxKVBlockSize)
	}
	if c.KVCapacityBlocks < 0 || c.KVCapacityBlocks > MaxKVCapacityBlocks {
		bad("kv-capacity-blocks", "%d is not in 0..%d", c.KVCapacityBlocks, MaxKVCapacityBlocks)
	}
	if e := c.KVEventsEndpoint; e != "" {
		if host, port, err := net.SplitHostPort(strings.TrimPrefix(e, "tcp://")); !strings.HasPrefix(e, "tcp://") ||
			err != nil || host == "" || port == "" || strings.ContainsAny(e, " \t\r\n") {
			bad("kv-events-endpoint", "%q is not tcp://host:port", e)
		}
	}
	if !strings.HasPrefix(c.LoRALoadPath, "/") {
		bad("lora-load-path", "%q must start with /", c.LoRALoadPath)
	}
	if !strings.HasPrefix(c.LoRAUnloadPath, "/") {
		bad("lora-unload-path", "%q must start with /", c.LoRAUnloadPath)
	}
	if a := c.AdminAddr; a != "" {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "" || strings.ContainsAny(a, " \t\r\n") {
			bad("admin-addr", "%q is not host:port", a)
		}
	}
	if len(c.KVEventsTopic) > 256 {
		bad("kv-events-topic", "is %d bytes long; at most 256", len(c.KVEventsTopic))
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
		zero bool // zero allowed
	}{
		{"request-timeout", c.RequestTimeout, false},
		{"probe-interval", c.ProbeInterval, false},
		{"probe-timeout", c.ProbeTimeout, false},
		{"stats-interval", c.StatsInterval, false},
		{"scrape-interval", c.ScrapeInterval, false},
		{"drain-quiet-period", c.DrainQuietPeriod, true},
		{"drain-timeout", c.DrainTimeout, true},
		{"kv-flush-interval", c.KVFlushInterval, false},
	} {
		if d.v < 0 || (d.v == 0 && !d.zero) {
			bad(d.flag, "%v must be positive", d.v)
		}
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// queueDepth resolves the queue bound.
func (c Config) queueDepth() int {
	if c.QueueDepth < 0 {
		return 10 * c.ContainerConcurrency
	}
	return c.QueueDepth
}

// drainTimeout resolves the in-flight wait of a drain.
func (c Config) drainTimeout() time.Duration {
	if c.DrainTimeout == 0 {
		return c.RequestTimeout
	}
	return c.DrainTimeout
}
