package sim

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
)

// Physics are the costs of the simulated engine's scheduler steps and the
// size of its KV cache.
type Physics struct {
	// PrefillTPS is the prefill throughput in tokens per second.
	PrefillTPS float64
	// PrefillOverhead is added to every step that contains prefill.
	PrefillOverhead time.Duration
	// DecodeBase is the fixed cost of every step.
	DecodeBase time.Duration
	// DecodePerSeq is added per sequence taking part in a step.
	DecodePerSeq time.Duration
	// KVTokens is the KV cache capacity in tokens; the default number of KV
	// blocks is KVTokens / block size.
	KVTokens int
	// KVTransferOverhead is the fixed cost of receiving a prompt's KV from a
	// prefill engine (disaggregated prefill/decode).
	KVTransferOverhead time.Duration
	// KVTransferPerToken is the cost of receiving one token's KV.
	KVTransferPerToken time.Duration
	// TPCommBase is the fixed communication cost of a step under tensor
	// parallelism (its all-reduces' latency); only when the tensor-parallel
	// size is above 1.
	TPCommBase time.Duration
	// TPCommPerToken is the all-reduce cost of one token's activations
	// under tensor parallelism, scaled by 2(T−1)/T (a ring all-reduce).
	TPCommPerToken time.Duration
	// PPStageLatency is added to every step per pipeline stage boundary
	// (the hand-off of activations from one stage to the next).
	PPStageLatency time.Duration
}

// ProfileH100Llama8B is the name of the default profile: Llama-3-8B (fp16)
// on one H100 80GB. docs/simulator.md explains where the numbers come from.
const ProfileH100Llama8B = "h100-8b"

// Profile returns the physics of a named profile.
func Profile(name string) (Physics, bool) {
	switch name {
	case ProfileH100Llama8B:
		return Physics{
			PrefillTPS:      12000,
			PrefillOverhead: 15 * time.Millisecond,
			DecodeBase:      6 * time.Millisecond,
			DecodePerSeq:    350 * time.Microsecond,
			KVTokens:        500000,
			// 128 KiB of KV a token over ~25 GB/s of RDMA: ~5.2us.
			KVTransferOverhead: 2 * time.Millisecond,
			KVTransferPerToken: 5 * time.Microsecond,
			// 64 all-reduces a step (2 a layer, 32 layers) at ~8us each;
			// 512 KiB of activations a token at ~250 GB/s of NVLink.
			TPCommBase:     500 * time.Microsecond,
			TPCommPerToken: 2 * time.Microsecond,
			PPStageLatency: 500 * time.Microsecond,
		}, true
	}
	return Physics{}, false
}

// ProfileNames lists the known profiles.
func ProfileNames() []string { return []string{ProfileH100Llama8B} }

// Roles of an engine in disaggregated prefill/decode (--role), after the
// kv_role of vLLM's NixlConnector: unified is kv_both.
const (
	// RoleUnified serves every request: plain ones, remote prefills
	// (kv_transfer_params.do_remote_decode) and remote decodes
	// (kv_transfer_params.do_remote_prefill).
	RoleUnified = "unified"
	// RolePrefill refuses remote decodes.
	RolePrefill = "prefill"
	// RoleDecode refuses remote prefills.
	RoleDecode = "decode"
)

// RoleNames lists the known roles.
func RoleNames() []string { return []string{RoleUnified, RolePrefill, RoleDecode} }

// LoRAModule is an adapter served at startup (--lora-modules name=path).
type LoRAModule struct {
	Name string
	Path string
}

// Config configures a simulated engine. The zero value is not usable; start
// from DefaultConfig.
type Config struct {
	Host string // --host
	Port int    // --port
	// Model is the served model name (--model, alias --served-model-name).
	Model string
	// Role is the engine's part in disaggregated prefill/decode (--role):
	// RoleUnified, RolePrefill or RoleDecode.
	Role string

	MaxNumSeqs          int // --max-num-seqs
	MaxNumBatchedTokens int // --max-num-batched-tokens: token budget of a step
	MaxModelLen         int // --max-model-len: prompt + output tokens
	BlockSize           int // --block-size, in tokens
	// KVBlocks is the number of KV blocks (--kv-blocks); 0 derives it from
	// Physics.KVTokens / BlockSize.
	KVBlocks int

	Physics Physics
	// ZeroLatency makes every physics cost zero (--zero-latency).
	ZeroLatency bool
	// TimeScale runs the simulation this many times faster than real time
	// (--time-scale); reported latencies stay in simulated time.
	TimeScale float64
	// StartupDelay is the simulated model loading time (--startup-delay).
	StartupDelay time.Duration

	// DefaultMaxTokens is the output length when a request sets no max_tokens.
	DefaultMaxTokens int

	FailRate         float64 // --fail-rate: fraction of requests answered 500
	Seed             uint64  // --seed of the failure RNG
	AbortAfterTokens int     // --abort-after-tokens: cut streams after N tokens
	ExitAfterTokens  int     // --exit-after-tokens: crash after a stream sent N tokens

	EnableLoRA  bool         // --enable-lora (implied by LoRAModules)
	MaxLoRAs    int          // --max-loras: distinct adapters in one batch
	LoRAModules []LoRAModule // --lora-modules

	// KVEventsEndpoint is where the engine publishes its KV-cache events in
	// vLLM's format over ZeroMQ (--kv-events-endpoint), "" for nowhere. As
	// in vLLM, a wildcard host (tcp://*:5557), ipc:// and inproc:// are bound
	// and subscribers connect; any other tcp:// endpoint is connected to, and
	// the subscriber binds it (see kvevents.PublisherBinds).
	KVEventsEndpoint string
	// KVEventsTopic is the topic of the events (--kv-events-topic).
	KVEventsTopic string

	// Tokenizer is a Hugging Face tokenizer.json, or a directory holding
	// one (--tokenizer). The engine then counts, hashes and reports the
	// real token ids of the canonical prompt text instead of the
	// deterministic tokenizer's four bytes a token. New loads it once; ""
	// keeps the deterministic tokenizer.
	Tokenizer string

	// Parallel is the engine's parallelism (--tensor-parallel-size,
	// --pipeline-parallel-size, --data-parallel-size,
	// --enable-expert-parallel): it shapes the speed model
	// (docs/simulator.md, "Parallelism").
	Parallel Parallel
	// Group is the engine's place in a serving group of several processes
	// (--group-size, --rank, --leader-address); the zero value, or a size
	// of 1, is a lone engine.
	Group GroupConfig

	// ShutdownTimeout bounds the graceful shutdown of Main (--shutdown-timeout).
	ShutdownTimeout time.Duration
	// WriteTimeout is how long one write of a response (a stream's batch of
	// chunks, at most 32 KiB, or a whole response) may wait for a client
	// that does not read, in real time (--write-timeout). The request is
	// then aborted and its sequence leaves the engine.
	WriteTimeout time.Duration

	flagsSet uint16 // physics/model flags set explicitly, so --profile keeps them
}

const (
	setPrefillTPS = 1 << iota
	setPrefillOverhead
	setDecodeBase
	setDecodePerSeq
	setServedName
	setKVTransferOverhead
	setKVTransferPerToken
	setTPCommBase
	setTPCommPerToken
	setPPStageLatency
)

// DefaultConfig returns the defaults of every flag (profile h100-8b).
func DefaultConfig() Config {
	p, _ := Profile(ProfileH100Llama8B)
	return Config{
		Host:                "127.0.0.1",
		Port:                8000,
		Model:               "sim-model",
		Role:                RoleUnified,
		MaxNumSeqs:          256,
		MaxNumBatchedTokens: 8192,
		MaxModelLen:         32768,
		BlockSize:           16,
		Physics:             p,
		TimeScale:           1,
		DefaultMaxTokens:    64,
		MaxLoRAs:            1,
		Parallel:            Parallel{Tensor: 1, Pipeline: 1, Data: 1},
		Group:               GroupConfig{Size: 1},
		ShutdownTimeout:     30 * time.Second,
		WriteTimeout:        30 * time.Second,
	}
}

// NumKVBlocks returns the effective number of KV blocks.
func (c Config) NumKVBlocks() int {
	if c.KVBlocks > 0 || c.BlockSize <= 0 {
		return c.KVBlocks
	}
	return c.Physics.KVTokens / c.BlockSize
}

// LoRAEnabled reports whether the engine serves LoRA adapters.
func (c Config) LoRAEnabled() bool { return c.EnableLoRA || len(c.LoRAModules) > 0 }

// Validate checks every field and reports all problems, naming the flags.
func (c Config) Validate() error {
	var p flagProblems
	c.validateServing(&p)
	c.validateCapacity(&p)
	c.validateTiming(&p)
	c.validateBehaviour(&p)
	c.validateKVEvents(&p)
	c.validateLoRAModules(&p)
	c.validateParallel(&p)
	c.validateGroup(&p)
	return errors.Join(p...)
}

// flagProblems collects Validate's findings, in order.
type flagProblems []error

// bad notes that a flag's value is invalid, and why.
func (p *flagProblems) bad(flagName string, value any, why string) {
	*p = append(*p, fmt.Errorf("invalid --%s %v: %s", flagName, value, why))
}

// validateServing checks where and what the simulator serves.
func (c Config) validateServing(p *flagProblems) {
	if c.Host == "" {
		p.bad("host", `""`, "must not be empty")
	}
	if c.Port < 0 || c.Port > 65535 {
		p.bad("port", c.Port, "must be in 0..65535")
	}
	if strings.TrimSpace(c.Model) == "" {
		p.bad("model", strconv.Quote(c.Model), "must not be empty")
	}
	if !slices.Contains(RoleNames(), c.Role) {
		p.bad("role", strconv.Quote(c.Role), "must be one of "+strings.Join(RoleNames(), ", "))
	}
}

// validateCapacity checks the batch and KV-cache sizes.
func (c Config) validateCapacity(p *flagProblems) {
	if c.MaxNumSeqs < 1 {
		p.bad("max-num-seqs", c.MaxNumSeqs, "must be at least 1")
	}
	if c.MaxNumBatchedTokens < 1 {
		p.bad("max-num-batched-tokens", c.MaxNumBatchedTokens, "must be at least 1")
	} else if c.MaxNumBatchedTokens < c.MaxNumSeqs {
		p.bad("max-num-batched-tokens", c.MaxNumBatchedTokens, fmt.Sprintf("must be at least --max-num-seqs (%d)", c.MaxNumSeqs))
	}
	if c.MaxModelLen < 2 {
		p.bad("max-model-len", c.MaxModelLen, "must be at least 2")
	}
	if c.BlockSize < 1 {
		p.bad("block-size", c.BlockSize, "must be at least 1")
	}
	if c.KVBlocks < 0 {
		p.bad("kv-blocks", c.KVBlocks, "must not be negative (0 derives it from the profile)")
	}
	if c.BlockSize >= 1 && c.KVBlocks >= 0 && c.MaxModelLen >= 2 {
		if n := c.NumKVBlocks(); n*c.BlockSize < c.MaxModelLen {
			p.bad("kv-blocks", n, fmt.Sprintf("%d blocks x --block-size %d = %d tokens cannot hold one --max-model-len %d sequence",
				n, c.BlockSize, n*c.BlockSize, c.MaxModelLen))
		}
	}
}

// validateTiming checks the physics and the other durations.
func (c Config) validateTiming(p *flagProblems) {
	if !c.ZeroLatency && !(c.Physics.PrefillTPS > 0) || math.IsInf(c.Physics.PrefillTPS, 0) {
		p.bad("prefill-tps", c.Physics.PrefillTPS, "must be a positive number")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"prefill-overhead", c.Physics.PrefillOverhead},
		{"decode-base", c.Physics.DecodeBase},
		{"decode-per-seq", c.Physics.DecodePerSeq},
		{"kv-transfer-overhead", c.Physics.KVTransferOverhead},
		{"kv-transfer-per-token", c.Physics.KVTransferPerToken},
		{"tp-comm-base", c.Physics.TPCommBase},
		{"tp-comm-per-token", c.Physics.TPCommPerToken},
		{"pp-stage-latency", c.Physics.PPStageLatency},
		{"startup-delay", c.StartupDelay},
		{"shutdown-timeout", c.ShutdownTimeout},
	} {
		if d.v < 0 {
			p.bad(d.name, d.v, "must not be negative")
		}
	}
	if c.WriteTimeout <= 0 {
		p.bad("write-timeout", c.WriteTimeout, "must be positive")
	}
	if !(c.TimeScale > 0) || math.IsInf(c.TimeScale, 0) {
		p.bad("time-scale", c.TimeScale, "must be a positive number")
	}
}

// validateBehaviour checks the request defaults and injected failures.
func (c Config) validateBehaviour(p *flagProblems) {
	if c.DefaultMaxTokens < 1 {
		p.bad("default-max-tokens", c.DefaultMaxTokens, "must be at least 1")
	}
	if !(c.FailRate >= 0 && c.FailRate <= 1) {
		p.bad("fail-rate", c.FailRate, "must be in 0..1")
	}
	if c.AbortAfterTokens < 0 {
		p.bad("abort-after-tokens", c.AbortAfterTokens, "must not be negative")
	}
	if c.ExitAfterTokens < 0 {
		p.bad("exit-after-tokens", c.ExitAfterTokens, "must not be negative")
	}
	if c.MaxLoRAs < 1 {
		p.bad("max-loras", c.MaxLoRAs, "must be at least 1")
	}
}

// validateKVEvents checks the KV-cache events publisher.
func (c Config) validateKVEvents(p *flagProblems) {
	if c.KVEventsEndpoint == "" {
		if c.KVEventsTopic != "" {
			p.bad("kv-events-topic", strconv.Quote(c.KVEventsTopic), "has no effect without --kv-events-endpoint")
		}
		return
	}
	if _, err := kvevents.PublisherBinds(c.KVEventsEndpoint); err != nil {
		p.bad("kv-events-endpoint", strconv.Quote(c.KVEventsEndpoint), "want tcp://HOST:PORT, ipc://PATH or inproc://NAME")
	}
	if c.BlockSize > kvevents.MaxTokens {
		p.bad("block-size", c.BlockSize, fmt.Sprintf("must be at most %d with --kv-events-endpoint (the token ids of one block in one event)", kvevents.MaxTokens))
	}
}

// validateLoRAModules checks the adapters served from the start.
func (c Config) validateLoRAModules(p *flagProblems) {
	seen := map[string]bool{}
	for _, m := range c.LoRAModules {
		switch {
		case m.Name == "" || m.Path == "":
			p.bad("lora-modules", m.Name+"="+m.Path, "want name=path")
		case m.Name == c.Model:
			p.bad("lora-modules", m.Name, "adapter name equals the served model name")
		case seen[m.Name]:
			p.bad("lora-modules", m.Name, "adapter listed twice")
		}
		seen[m.Name] = true
	}
}

// RegisterFlags registers every field as a flag on fs, defaulting to the
// current values of c. --profile sets the physics flags that are not given
// explicitly, wherever it appears on the command line.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Host, "host", c.Host, "address to listen on")
	fs.IntVar(&c.Port, "port", c.Port, "port to listen on (0 picks a free one)")
	fs.Var(&modelFlag{c: c, served: false}, "model", "served model name")
	fs.Var(&modelFlag{c: c, served: true}, "served-model-name", "served model name (vLLM alias of --model; wins over it)")
	fs.StringVar(&c.Role, "role", c.Role, "disaggregated prefill/decode role: "+strings.Join(RoleNames(), ", "))

	fs.IntVar(&c.MaxNumSeqs, "max-num-seqs", c.MaxNumSeqs, "maximum number of sequences in the running batch")
	fs.IntVar(&c.MaxNumBatchedTokens, "max-num-batched-tokens", c.MaxNumBatchedTokens, "token budget of one scheduler step (chunked prefill)")
	fs.IntVar(&c.MaxModelLen, "max-model-len", c.MaxModelLen, "maximum prompt + output tokens of a sequence")
	fs.IntVar(&c.BlockSize, "block-size", c.BlockSize, "tokens per KV block")
	fs.IntVar(&c.KVBlocks, "kv-blocks", c.KVBlocks, "number of KV blocks (0: profile KV tokens / block size, 31250 for h100-8b at block size 16)")

	fs.Var(profileFlag{c}, "profile", "physics profile: "+strings.Join(ProfileNames(), ", ")+" (explicit physics flags win)")
	fs.Var(&floatFlag{p: &c.Physics.PrefillTPS, set: &c.flagsSet, bit: setPrefillTPS}, "prefill-tps", "prefill throughput, tokens per second")
	fs.Var(&durFlag{p: &c.Physics.PrefillOverhead, set: &c.flagsSet, bit: setPrefillOverhead}, "prefill-overhead", "extra time of a step that contains prefill")
	fs.Var(&durFlag{p: &c.Physics.DecodeBase, set: &c.flagsSet, bit: setDecodeBase}, "decode-base", "fixed time of every step")
	fs.Var(&durFlag{p: &c.Physics.DecodePerSeq, set: &c.flagsSet, bit: setDecodePerSeq}, "decode-per-seq", "time per sequence in a step")
	fs.Var(&durFlag{p: &c.Physics.KVTransferOverhead, set: &c.flagsSet, bit: setKVTransferOverhead}, "kv-transfer-overhead",
		"fixed time of receiving a prompt's KV from a prefill engine (kv_transfer_params.do_remote_prefill)")
	fs.Var(&durFlag{p: &c.Physics.KVTransferPerToken, set: &c.flagsSet, bit: setKVTransferPerToken}, "kv-transfer-per-token",
		"time of receiving one uncached prompt token's KV from a prefill engine")
	fs.Var(&durFlag{p: &c.Physics.TPCommBase, set: &c.flagsSet, bit: setTPCommBase}, "tp-comm-base",
		"fixed communication time of a step under tensor parallelism (its all-reduces' latency)")
	fs.Var(&durFlag{p: &c.Physics.TPCommPerToken, set: &c.flagsSet, bit: setTPCommPerToken}, "tp-comm-per-token",
		"all-reduce time of one token's activations under tensor parallelism, scaled by 2(T-1)/T")
	fs.Var(&durFlag{p: &c.Physics.PPStageLatency, set: &c.flagsSet, bit: setPPStageLatency}, "pp-stage-latency",
		"time added to every step per pipeline stage boundary")
	fs.BoolVar(&c.ZeroLatency, "zero-latency", c.ZeroLatency, "make every physics cost zero")
	fs.Float64Var(&c.TimeScale, "time-scale", c.TimeScale, "run this many times faster than real time")
	fs.DurationVar(&c.StartupDelay, "startup-delay", c.StartupDelay, "simulated model loading time (503 until then)")
	fs.IntVar(&c.DefaultMaxTokens, "default-max-tokens", c.DefaultMaxTokens, "output tokens when a request sets no max_tokens")

	fs.Float64Var(&c.FailRate, "fail-rate", c.FailRate, "fraction (0..1) of completion requests answered with a 500 error")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the failure injection RNG")
	fs.IntVar(&c.AbortAfterTokens, "abort-after-tokens", c.AbortAfterTokens, "abort every stream's connection after N tokens (0: off)")
	fs.IntVar(&c.ExitAfterTokens, "exit-after-tokens", c.ExitAfterTokens, "crash the engine (exit status 3) once a stream has sent N tokens (0: off)")

	fs.BoolVar(&c.EnableLoRA, "enable-lora", c.EnableLoRA, "serve LoRA adapters (implied by --lora-modules)")
	fs.IntVar(&c.MaxLoRAs, "max-loras", c.MaxLoRAs, "maximum distinct LoRA adapters in one batch")
	fs.Var(loraFlag{c}, "lora-modules", "LoRA adapters as name=path (repeatable, comma-separated, or JSON {\"name\":..,\"path\":..})")

	fs.StringVar(&c.KVEventsEndpoint, "kv-events-endpoint", c.KVEventsEndpoint,
		"publish KV-cache events in vLLM's format (ZeroMQ PUB, msgpack) on this endpoint: a wildcard host (tcp://*:5557), ipc:// and inproc:// are bound, "+
			"any other tcp:// endpoint (tcp://127.0.0.1:5557) is connected to, the subscriber binding it; empty: off")
	fs.StringVar(&c.KVEventsTopic, "kv-events-topic", c.KVEventsTopic, "topic of the KV-cache events (needs --kv-events-endpoint)")
	fs.StringVar(&c.Tokenizer, "tokenizer", c.Tokenizer,
		"a Hugging Face tokenizer.json (or a directory holding one), read once at start and never downloaded: prompt token counts, "+
			"prefix-cache keys, KV events and /tokenize use its token ids of the canonical prompt text; empty: the deterministic tokenizer (4 bytes a token)")

	c.Parallel.registerFlags(fs)
	c.Group.registerFlags(fs)

	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "how long graceful shutdown waits for in-flight requests")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout,
		"how long one write of a response may wait for a client that does not read before the request is aborted (real time)")
}

type modelFlag struct {
	c      *Config
	served bool
}

func (f *modelFlag) String() string {
	if f == nil || f.c == nil {
		return ""
	}
	return f.c.Model
}

func (f *modelFlag) Set(v string) error {
	if !f.served && f.c.flagsSet&setServedName != 0 {
		return nil // --served-model-name wins over --model, as in vLLM
	}
	if f.served {
		f.c.flagsSet |= setServedName
	}
	f.c.Model = v
	return nil
}

type profileFlag struct{ c *Config }

func (f profileFlag) String() string {
	if f.c == nil {
		return ""
	}
	return ProfileH100Llama8B
}

func (f profileFlag) Set(v string) error {
	p, ok := Profile(v)
	if !ok {
		return fmt.Errorf("unknown profile %q (known: %s)", v, strings.Join(ProfileNames(), ", "))
	}
	ph := &f.c.Physics
	if f.c.flagsSet&setPrefillTPS == 0 {
		ph.PrefillTPS = p.PrefillTPS
	}
	if f.c.flagsSet&setPrefillOverhead == 0 {
		ph.PrefillOverhead = p.PrefillOverhead
	}
	if f.c.flagsSet&setDecodeBase == 0 {
		ph.DecodeBase = p.DecodeBase
	}
	if f.c.flagsSet&setDecodePerSeq == 0 {
		ph.DecodePerSeq = p.DecodePerSeq
	}
	if f.c.flagsSet&setKVTransferOverhead == 0 {
		ph.KVTransferOverhead = p.KVTransferOverhead
	}
	if f.c.flagsSet&setKVTransferPerToken == 0 {
		ph.KVTransferPerToken = p.KVTransferPerToken
	}
	if f.c.flagsSet&setTPCommBase == 0 {
		ph.TPCommBase = p.TPCommBase
	}
	if f.c.flagsSet&setTPCommPerToken == 0 {
		ph.TPCommPerToken = p.TPCommPerToken
	}
	if f.c.flagsSet&setPPStageLatency == 0 {
		ph.PPStageLatency = p.PPStageLatency
	}
	ph.KVTokens = p.KVTokens
	return nil
}

type floatFlag struct {
	p   *float64
	set *uint16
	bit uint16
}

func (f *floatFlag) String() string {
	if f == nil || f.p == nil {
		return ""
	}
	return strconv.FormatFloat(*f.p, 'g', -1, 64)
}

func (f *floatFlag) Set(v string) error {
	x, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return errors.New("not a number")
	}
	*f.p = x
	*f.set |= f.bit
	return nil
}

type durFlag struct {
	p   *time.Duration
	set *uint16
	bit uint16
}

func (f *durFlag) String() string {
	if f == nil || f.p == nil {
		return ""
	}
	return f.p.String()
}

func (f *durFlag) Set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil {
		return errors.New("not a duration (e.g. 15ms, 350us)")
	}
	*f.p = d
	*f.set |= f.bit
	return nil
}

type loraFlag struct{ c *Config }

func (f loraFlag) String() string {
	if f.c == nil {
		return ""
	}
	parts := make([]string, len(f.c.LoRAModules))
	for i, m := range f.c.LoRAModules {
		parts[i] = m.Name + "=" + m.Path
	}
	return strings.Join(parts, ",")
}

func (f loraFlag) Set(v string) error {
	mods, err := ParseLoRAModules(v)
	if err != nil {
		return err
	}
	f.c.LoRAModules = append(slices.Clip(f.c.LoRAModules), mods...)
	return nil
}

// ParseLoRAModules parses one --lora-modules value: name=path, several of
// them separated by commas, or vLLM's JSON form {"name":...,"path":...}.
func ParseLoRAModules(v string) ([]LoRAModule, error) {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, "{") {
		var m struct {
			Name string `json:"name"`
			Path string `json:"path"`
		}
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return nil, fmt.Errorf("lora module %s: %w", v, err)
		}
		if m.Name == "" || m.Path == "" {
			return nil, fmt.Errorf("lora module %s: want name and path", v)
		}
		return []LoRAModule{{Name: m.Name, Path: m.Path}}, nil
	}
	var out []LoRAModule
	for part := range strings.SplitSeq(v, ",") {
		name, path, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || path == "" {
			return nil, fmt.Errorf("lora module %q: want name=path", part)
		}
		out = append(out, LoRAModule{Name: name, Path: path})
	}
	return out, nil
}
