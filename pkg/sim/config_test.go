package sim

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	require.NoError(t, c.Validate())
	assert.Equal(t, 31250, c.NumKVBlocks())
	assert.Equal(t, 500000, c.NumKVBlocks()*c.BlockSize)
	assert.Equal(t, RoleUnified, c.Role)
	assert.Equal(t, 2*time.Millisecond, c.Physics.KVTransferOverhead)
	assert.Equal(t, 5*time.Microsecond, c.Physics.KVTransferPerToken, "128 KiB of Llama-3-8B KV a token at ~25 GB/s")
	assert.Equal(t, 30*time.Second, c.WriteTimeout)
	c.BlockSize = 32
	assert.Equal(t, 15625, c.NumKVBlocks(), "the profile fixes KV tokens, not blocks")
	c.KVBlocks = 10
	assert.Equal(t, 10, c.NumKVBlocks())
}

func TestValidateNamesFlags(t *testing.T) {
	c := DefaultConfig()
	c.MaxNumSeqs = 0
	c.TimeScale = 0
	c.FailRate = 1.5
	c.KVBlocks = 10 // 160 tokens < max-model-len
	c.Physics.DecodeBase = -time.Millisecond
	c.Model = ""
	c.LoRAModules = []LoRAModule{{Name: "a", Path: "/a"}, {Name: "a", Path: "/b"}}
	c.Role = "kv_both"
	c.Physics.KVTransferOverhead = -time.Millisecond
	c.Physics.KVTransferPerToken = -time.Microsecond
	c.WriteTimeout = 0
	err := c.Validate()
	require.Error(t, err)
	for _, flagName := range []string{"--max-num-seqs", "--time-scale", "--fail-rate", "--kv-blocks", "--decode-base", "--model", "--lora-modules",
		"--role", "--kv-transfer-overhead", "--kv-transfer-per-token", "--write-timeout"} {
		assert.ErrorContains(t, err, flagName)
	}

	c = DefaultConfig()
	c.MaxNumBatchedTokens = 100
	assert.ErrorContains(t, c.Validate(), "must be at least --max-num-seqs")

	c = DefaultConfig()
	c.ZeroLatency = true
	c.Physics = Physics{KVTokens: 500000}
	assert.NoError(t, c.Validate(), "zero latency needs no prefill rate")
}

func parseFlags(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	c := DefaultConfig()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	err := fs.Parse(normalizeArgs(args))
	return c, err
}

func TestFlags(t *testing.T) {
	c, err := parseFlags(t, "--host", "0.0.0.0", "--port=9000", "--max-num-seqs", "8", "--kv-blocks", "100",
		"--block-size", "32", "--time-scale", "50", "--startup-delay", "3s", "--zero-latency",
		"--fail-rate", "0.1", "--seed", "7", "--abort-after-tokens", "5", "--exit-after-tokens", "9", "--default-max-tokens", "12",
		"--role", "decode", "--kv-transfer-overhead", "1ms", "--kv_transfer_per_token", "20us", "--write-timeout", "5s")
	require.NoError(t, err)
	assert.Equal(t, 5*time.Second, c.WriteTimeout)
	assert.Equal(t, RoleDecode, c.Role)
	assert.Equal(t, time.Millisecond, c.Physics.KVTransferOverhead)
	assert.Equal(t, 20*time.Microsecond, c.Physics.KVTransferPerToken)
	assert.Equal(t, "0.0.0.0", c.Host)
	assert.Equal(t, 9000, c.Port)
	assert.Equal(t, 8, c.MaxNumSeqs)
	assert.Equal(t, 100, c.KVBlocks)
	assert.Equal(t, 32, c.BlockSize)
	assert.Equal(t, 50.0, c.TimeScale)
	assert.Equal(t, 3*time.Second, c.StartupDelay)
	assert.True(t, c.ZeroLatency)
	assert.Equal(t, 0.1, c.FailRate)
	assert.Equal(t, uint64(7), c.Seed)
	assert.Equal(t, 5, c.AbortAfterTokens)
	assert.Equal(t, 9, c.ExitAfterTokens)
	assert.Equal(t, 12, c.DefaultMaxTokens)

	// vLLM spellings: underscores and --lora-modules with several values.
	c, err = parseFlags(t, "--max_num_batched_tokens=4096", "--lora-modules", "a=/x", "b=/y", "--max-loras", "2")
	require.NoError(t, err)
	assert.Equal(t, 4096, c.MaxNumBatchedTokens)
	assert.Equal(t, []LoRAModule{{"a", "/x"}, {"b", "/y"}}, c.LoRAModules)
	assert.True(t, c.LoRAEnabled())
	c, err = parseFlags(t, "--lora-modules", `{"name":"j","path":"/j"}`, "--lora-modules=k=/k,l=/l")
	require.NoError(t, err)
	assert.Equal(t, []LoRAModule{{"j", "/j"}, {"k", "/k"}, {"l", "/l"}}, c.LoRAModules)
	_, err = parseFlags(t, "--lora-modules", "nopath")
	assert.ErrorContains(t, err, "lora-modules")

	// --served-model-name wins over --model in either order.
	for _, args := range [][]string{
		{"--model", "meta-llama/Llama-3-8B", "--served-model-name", "llama"},
		{"--served-model-name", "llama", "--model", "meta-llama/Llama-3-8B"},
	} {
		c, err = parseFlags(t, args...)
		require.NoError(t, err)
		assert.Equal(t, "llama", c.Model)
	}

	// --profile fills only the physics flags not given, in either order.
	for _, args := range [][]string{
		{"--prefill-tps", "5", "--decode-per-seq", "1ms", "--kv-transfer-per-token", "1us", "--profile", "h100-8b"},
		{"--profile", "h100-8b", "--prefill-tps", "5", "--decode-per-seq", "1ms", "--kv-transfer-per-token", "1us"},
	} {
		c, err = parseFlags(t, args...)
		require.NoError(t, err)
		assert.Equal(t, 5.0, c.Physics.PrefillTPS)
		assert.Equal(t, time.Millisecond, c.Physics.DecodePerSeq)
		assert.Equal(t, 6*time.Millisecond, c.Physics.DecodeBase)
		assert.Equal(t, time.Microsecond, c.Physics.KVTransferPerToken)
		assert.Equal(t, 2*time.Millisecond, c.Physics.KVTransferOverhead)
	}
	_, err = parseFlags(t, "--profile", "tpu")
	assert.ErrorContains(t, err, "unknown profile")
	_, err = parseFlags(t, "--decode-base", "6")
	assert.ErrorContains(t, err, "decode-base")
	c, err = parseFlags(t, "--role", "both")
	require.NoError(t, err, "parsed; Validate rejects it")
	assert.ErrorContains(t, c.Validate(), `invalid --role "both"`)
}
