package bench

import (
	"flag"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	err := fs.Parse(args)
	return c, err
}

func TestRegisterFlagsDefaults(t *testing.T) {
	c, err := parse(t)
	require.NoError(t, err)
	assert.Equal(t, DefaultConfig(), c)
	assert.Equal(t, EndpointChat, c.Endpoint)
	assert.Equal(t, ArrivalPoisson, c.Arrival)
	assert.True(t, c.Stream)
	assert.Equal(t, 10*time.Minute, c.Timeout)
	assert.Equal(t, int64(1), c.Seed)

	r := c.Resolved()
	assert.Equal(t, 1000, r.NumPrompts)
	c.Workload = WorkloadSharedPrefix
	r = c.Resolved()
	assert.Equal(t, 64*16, r.NumPrompts)
	assert.Equal(t, 2048, r.SystemPromptLen)
	c.Workload = WorkloadMultiTurn
	r = c.Resolved()
	assert.Equal(t, 32*4, r.NumPrompts)
	assert.Equal(t, 0, r.SystemPromptLen)
}

func TestRegisterFlagsParse(t *testing.T) {
	c, err := parse(t, "--target", "http://h:1", "--model", "x", "--endpoint", "completions", "--api-key", "k",
		"--rate", "12.5", "--arrival", "constant", "--max-concurrency", "7", "--num-prompts", "9", "--duration", "3s",
		"--seed", "42", "--warmup", "2", "--stream=false", "--timeout", "5s", "--workload", "multi-turn",
		"--input-len", "11", "--output-len", "12", "--range-ratio", "0.5", "--groups", "3", "--prompts-per-group", "4",
		"--system-prompt-len", "0", "--question-len", "13", "--conversations", "5", "--turns", "6")
	require.NoError(t, err)
	assert.Equal(t, Config{
		Target: "http://h:1", Model: "x", Endpoint: "completions", APIKey: "k",
		Rate: 12.5, Arrival: "constant", MaxConcurrency: 7, NumPrompts: 9, Duration: 3 * time.Second,
		Seed: 42, Warmup: 2, Stream: false, Timeout: 5 * time.Second, Workload: "multi-turn",
		InputLen: 11, OutputLen: 12, RangeRatio: 0.5, Groups: 3, PromptsPerGroup: 4,
		SystemPromptLen: 0, QuestionLen: 13, Conversations: 5, Turns: 6,
	}, c)
	require.NoError(t, c.Validate())
	assert.Equal(t, 9, c.Resolved().NumPrompts, "an explicit --num-prompts wins")
	assert.Equal(t, 0, c.Resolved().SystemPromptLen)

	_, err = parse(t, "--num-prompts", "0")
	assert.ErrorContains(t, err, "must be >= 1")
	_, err = parse(t, "--system-prompt-len", "-3")
	assert.ErrorContains(t, err, "must be >= 0")
}

func TestHelpHidesWorkloadDefaults(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var out strings.Builder
	fs.SetOutput(&out)
	c.RegisterFlags(fs)
	fs.PrintDefaults()
	assert.NotContains(t, out.String(), "(default -1)")
	assert.Contains(t, out.String(), "-num-prompts")
}

func TestValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Target, ok.Model, ok.MaxConcurrency = "http://127.0.0.1:8080", "m", 1
	require.NoError(t, ok.Validate())

	for flagName, mutate := range map[string]func(*Config){
		"--target":            func(c *Config) { c.Target = "" },
		"--model":             func(c *Config) { c.Model = "" },
		"--endpoint":          func(c *Config) { c.Endpoint = "embeddings" },
		"--rate":              func(c *Config) { c.Rate = math.Inf(1) },
		"--arrival":           func(c *Config) { c.Arrival = "burst" },
		"--max-concurrency":   func(c *Config) { c.MaxConcurrency = 0 }, // closed loop needs a cap
		"--num-prompts":       func(c *Config) { c.NumPrompts = -1 },
		"--duration":          func(c *Config) { c.Duration = -time.Second },
		"--warmup":            func(c *Config) { c.Warmup = -1 },
		"--timeout":           func(c *Config) { c.Timeout = 0 },
		"--output-len":        func(c *Config) { c.OutputLen = 0 },
		"--input-len":         func(c *Config) { c.InputLen = 0 },
		"--range-ratio":       func(c *Config) { c.RangeRatio = 1.5 },
		"--workload":          func(c *Config) { c.Workload = "sharegpt" },
		"--groups":            func(c *Config) { c.Workload, c.Groups = WorkloadSharedPrefix, 0 },
		"--prompts-per-group": func(c *Config) { c.Workload, c.PromptsPerGroup = WorkloadSharedPrefix, 0 },
		"--question-len":      func(c *Config) { c.Workload, c.QuestionLen = WorkloadMultiTurn, 0 },
		"--conversations":     func(c *Config) { c.Workload, c.Conversations = WorkloadMultiTurn, 0 },
		"--turns":             func(c *Config) { c.Workload, c.Turns = WorkloadMultiTurn, 0 },
	} {
		c := ok
		mutate(&c)
		err := c.Validate()
		require.Error(t, err, flagName)
		assert.True(t, strings.HasPrefix(err.Error(), flagName+":"), "%s: %v", flagName, err)
	}

	bad := ok
	bad.Target = "127.0.0.1:8080"
	assert.ErrorContains(t, bad.Validate(), "--target:")

	open := ok
	open.Rate, open.MaxConcurrency = 100, 0
	assert.NoError(t, open.Validate(), "the open loop needs no cap")

	other := ok
	other.Groups = 0 // not the selected workload's setting
	assert.NoError(t, other.Validate())
}

func TestScheduleDoesNotDrift(t *testing.T) {
	s := newSchedule(200, ArrivalConstant, 1)
	for i := range 1000 {
		assert.Equal(t, time.Duration(i)*5*time.Millisecond, s.next())
	}

	const n, rate = 20000, 1000.0
	p := newSchedule(rate, ArrivalPoisson, 1)
	prev := p.next()
	assert.Zero(t, prev, "the first arrival is at the start")
	var last time.Duration
	for range n {
		last = p.next()
		require.GreaterOrEqual(t, last, prev)
		prev = last
	}
	meanGap := last.Seconds() / n
	assert.InDelta(t, 1/rate, meanGap, 0.03/rate, "exponential gaps of mean 1/rate")

	q := newSchedule(rate, ArrivalPoisson, 1)
	for range n {
		q.next()
	}
	assert.Equal(t, last, q.next(), "the seed makes the schedule reproducible")
}
