package bench

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"time"
)

// Endpoints.
const (
	EndpointChat        = "chat"        // POST {target}/v1/chat/completions
	EndpointCompletions = "completions" // POST {target}/v1/completions
)

// Arrival processes of the open loop.
const (
	ArrivalPoisson  = "poisson"  // exponential gaps of mean 1/rate
	ArrivalConstant = "constant" // gaps of exactly 1/rate
)

// Workload kinds.
const (
	WorkloadRandom       = "random"
	WorkloadSharedPrefix = "generated-shared-prefix"
	WorkloadMultiTurn    = "multi-turn"
)

// Defaults of the workload-dependent settings.
const (
	defaultNumPrompts            = 1000 // random
	defaultSharedSystemPromptLen = 2048 // generated-shared-prefix
	defaultMultiTurnSystemPrompt = 0    // multi-turn
)

// Config is one benchmark run. Zero NumPrompts and negative SystemPromptLen
// mean "the workload's default" (see Resolved).
type Config struct {
	Target   string // base URL; requests go to {Target}/v1/...
	Model    string
	Endpoint string // EndpointChat or EndpointCompletions
	APIKey   string // sent as "Authorization: Bearer ..." when set

	// Load shape.
	Rate           float64       // requests/s of the open loop; 0 = closed loop
	Arrival        string        // ArrivalPoisson or ArrivalConstant
	MaxConcurrency int           // cap on in-flight requests; 0 = none (open loop only)
	NumPrompts     int           // measured requests; 0 = the workload's default
	Duration       time.Duration // stop issuing after this long; 0 = no limit
	Seed           int64
	Warmup         int // requests sent (and awaited) before the measured run, excluded from results

	Stream  bool
	Timeout time.Duration // per request

	// Workload.
	Workload        string
	InputLen        int     // random: prompt tokens
	OutputLen       int     // every workload: max_tokens
	RangeRatio      float64 // random: lengths uniform in [len*ratio, len]
	Groups          int     // generated-shared-prefix
	PromptsPerGroup int     // generated-shared-prefix
	SystemPromptLen int     // generated-shared-prefix and multi-turn; negative = workload default
	QuestionLen     int     // generated-shared-prefix and multi-turn
	Conversations   int     // multi-turn
	Turns           int     // multi-turn

	// Tenants, when set, make a multi-tenant run: each tenant sends its
	// own requests, with its own key and settings, concurrently (see
	// TenantConfig). The run's own load shape and workload are then the
	// defaults of the tenants' settings.
	Tenants []Tenant
}

// DefaultConfig returns the defaults of every flag (Target and Model are
// required and left empty).
func DefaultConfig() Config {
	return Config{
		Endpoint:        EndpointChat,
		Arrival:         ArrivalPoisson,
		Seed:            1,
		Stream:          true,
		Timeout:         10 * time.Minute,
		Workload:        WorkloadRandom,
		InputLen:        256,
		OutputLen:       128,
		RangeRatio:      1.0,
		Groups:          64,
		PromptsPerGroup: 16,
		SystemPromptLen: -1,
		QuestionLen:     128,
		Conversations:   32,
		Turns:           4,
	}
}

// RegisterFlags binds c to fs with the defaults of DefaultConfig (the
// current values of c are overwritten by them).
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	fs.StringVar(&c.Target, "target", d.Target, "base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8080 (required)")
	fs.StringVar(&c.Model, "model", d.Model, "model name sent in every request (required)")
	fs.StringVar(&c.Endpoint, "endpoint", d.Endpoint, "API to call: chat (/v1/chat/completions) or completions (/v1/completions)")
	fs.StringVar(&c.APIKey, "api-key", d.APIKey, "bearer token sent in the Authorization header (optional)")

	fs.Float64Var(&c.Rate, "rate", d.Rate, "open-loop request rate in requests/s; 0 = closed loop (as fast as --max-concurrency allows)")
	fs.StringVar(&c.Arrival, "arrival", d.Arrival, "open-loop arrival process: poisson or constant")
	fs.IntVar(&c.MaxConcurrency, "max-concurrency", d.MaxConcurrency, "cap on in-flight requests; arrivals wait for a free slot (0 = unlimited; required > 0 when --rate is 0)")
	c.NumPrompts = d.NumPrompts
	fs.Var(optionalInt{&c.NumPrompts, 1}, "num-prompts", "measured requests in total (default: 1000 for random, groups*prompts-per-group for generated-shared-prefix, conversations*turns for multi-turn)")
	fs.DurationVar(&c.Duration, "duration", d.Duration, "stop issuing requests after this long (0 = no limit; in-flight requests complete)")
	fs.Int64Var(&c.Seed, "seed", d.Seed, "seed of the prompts and of the arrival times")
	fs.IntVar(&c.Warmup, "warmup", d.Warmup, "requests sent and awaited before the measured run, excluded from the results")

	fs.BoolVar(&c.Stream, "stream", d.Stream, "stream responses (SSE); needed to measure TTFT and inter-token latency")
	fs.DurationVar(&c.Timeout, "timeout", d.Timeout, "timeout of one request")

	fs.StringVar(&c.Workload, "workload", d.Workload, "workload: random, generated-shared-prefix or multi-turn")
	fs.IntVar(&c.InputLen, "input-len", d.InputLen, "random: prompt length in tokens")
	fs.IntVar(&c.OutputLen, "output-len", d.OutputLen, "output length in tokens (max_tokens, with ignore_eos)")
	fs.Float64Var(&c.RangeRatio, "range-ratio", d.RangeRatio, "random: input and output lengths are uniform in [len*ratio, len]")
	fs.IntVar(&c.Groups, "groups", d.Groups, "generated-shared-prefix: number of groups (distinct system prompts)")
	fs.IntVar(&c.PromptsPerGroup, "prompts-per-group", d.PromptsPerGroup, "generated-shared-prefix: prompts per group")
	c.SystemPromptLen = d.SystemPromptLen
	fs.Var(optionalInt{&c.SystemPromptLen, 0}, "system-prompt-len", "system prompt length in tokens (default: 2048 for generated-shared-prefix, 0 = none for multi-turn)")
	fs.IntVar(&c.QuestionLen, "question-len", d.QuestionLen, "generated-shared-prefix and multi-turn: question length in tokens")
	fs.IntVar(&c.Conversations, "conversations", d.Conversations, "multi-turn: number of conversations")
	fs.IntVar(&c.Turns, "turns", d.Turns, "multi-turn: turns per conversation")
	fs.Var(tenantsFile{&c.Tenants}, "tenants", "YAML file with a list of tenants, each with its own key (keyFromEnv), load shape and workload, run concurrently (default: none, one client)")
}

// optionalInt is an int flag whose unset value means "workload default": its
// help shows no default, and Set accepts only values >= min.
type optionalInt struct {
	p   *int
	min int
}

func (o optionalInt) String() string {
	if o.p == nil || *o.p < o.min {
		return ""
	}
	return strconv.Itoa(*o.p)
}

func (o optionalInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("not an integer")
	}
	if n < o.min {
		return fmt.Errorf("must be >= %d", o.min)
	}
	*o.p = n
	return nil
}

// Resolved returns c with the workload-dependent defaults filled in:
// NumPrompts and SystemPromptLen.
func (c Config) Resolved() Config {
	if c.SystemPromptLen < 0 {
		c.SystemPromptLen = defaultSharedSystemPromptLen
		if c.Workload == WorkloadMultiTurn {
			c.SystemPromptLen = defaultMultiTurnSystemPrompt
		}
	}
	if c.NumPrompts <= 0 {
		switch c.Workload {
		case WorkloadSharedPrefix:
			c.NumPrompts = c.Groups * c.PromptsPerGroup
		case WorkloadMultiTurn:
			c.NumPrompts = c.Conversations * c.Turns
		default:
			c.NumPrompts = defaultNumPrompts
		}
	}
	return c
}

// Validate checks c once; every error names the flag at fault. Only the
// settings of the selected workload are checked. With tenants, the run's
// own settings are checked once and each tenant's (the run's with its
// overrides) under the tenant's name; the tenants' key variables must be
// set.
func (c Config) Validate() error {
	if len(c.Tenants) > 0 {
		return c.validateTenants()
	}
	var errs []error
	for _, p := range c.problems() {
		errs = append(errs, p.err)
	}
	return errors.Join(errs...)
}

// problem is one invalid setting: the flag at fault and the error, which
// names it.
type problem struct {
	flag string
	err  error
}

// problems returns what is wrong with c, in flag order.
func (c Config) problems() []problem {
	var ps []problem
	bad := func(flag, format string, args ...any) {
		ps = append(ps, problem{flag, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...))})
	}
	if c.Target == "" {
		bad("target", "required")
	} else if u, err := url.Parse(c.Target); err != nil {
		bad("target", "%v", err)
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("target", "%q is not an http(s) URL with a host", c.Target)
	}
	if c.Model == "" {
		bad("model", "required")
	}
	if c.Endpoint != EndpointChat && c.Endpoint != EndpointCompletions {
		bad("endpoint", "%q: must be %s or %s", c.Endpoint, EndpointChat, EndpointCompletions)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		bad("rate", "must be a finite number >= 0, got %v", c.Rate)
	}
	if c.Arrival != ArrivalPoisson && c.Arrival != ArrivalConstant {
		bad("arrival", "%q: must be %s or %s", c.Arrival, ArrivalPoisson, ArrivalConstant)
	}
	if c.MaxConcurrency < 0 {
		bad("max-concurrency", "must be >= 0, got %d", c.MaxConcurrency)
	} else if c.Rate == 0 && c.MaxConcurrency == 0 {
		bad("max-concurrency", "must be > 0 when --rate is 0 (closed loop)")
	}
	if c.NumPrompts < 0 {
		bad("num-prompts", "must be >= 0, got %d", c.NumPrompts)
	}
	if c.Duration < 0 {
		bad("duration", "must be >= 0, got %v", c.Duration)
	}
	if c.Warmup < 0 {
		bad("warmup", "must be >= 0, got %d", c.Warmup)
	}
	if c.Timeout <= 0 {
		bad("timeout", "must be > 0, got %v", c.Timeout)
	}
	if c.OutputLen < 1 {
		bad("output-len", "must be >= 1, got %d", c.OutputLen)
	}
	c.checkWorkload(bad)
	return ps
}

// checkWorkload reports the bad settings of the selected workload to bad.
func (c Config) checkWorkload(bad func(flag, format string, args ...any)) {
	positive := func(flag string, v int) {
		if v < 1 {
			bad(flag, "must be >= 1, got %d", v)
		}
	}
	switch c.Workload {
	case WorkloadRandom:
		positive("input-len", c.InputLen)
		if !(c.RangeRatio >= 0 && c.RangeRatio <= 1) {
			bad("range-ratio", "must be in [0, 1], got %v", c.RangeRatio)
		}
	case WorkloadSharedPrefix:
		positive("groups", c.Groups)
		positive("prompts-per-group", c.PromptsPerGroup)
		positive("question-len", c.QuestionLen)
	case WorkloadMultiTurn:
		positive("conversations", c.Conversations)
		positive("turns", c.Turns)
		positive("question-len", c.QuestionLen)
	default:
		bad("workload", "%q: must be %s, %s or %s", c.Workload, WorkloadRandom, WorkloadSharedPrefix, WorkloadMultiTurn)
	}
}
