package queueproxy

import (
	"flag"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"--pod-name=p"}))
	require.NoError(t, c.Validate())
	assert.Equal(t, 8012, c.Port)
	assert.Equal(t, "http://127.0.0.1:8000", c.EngineURL)
	assert.Equal(t, int64(32<<20), c.MaxBodyBytes)
	assert.Equal(t, 10*time.Minute, c.RequestTimeout)
	assert.Equal(t, 10*time.Minute, c.drainTimeout())
	assert.Equal(t, 0, c.queueDepth())
	assert.True(t, c.KVModel)
	assert.Zero(t, c.KVBlockSize, "the engine's")
	assert.Zero(t, c.KVCapacityBlocks, "the engine's")
	assert.Equal(t, 20*time.Millisecond, c.KVFlushInterval)

	require.NoError(t, fs.Parse([]string{"--container-concurrency=4", "--drain-timeout=30s"}))
	assert.Equal(t, 40, c.queueDepth())
	assert.Equal(t, 30*time.Second, c.drainTimeout())
	require.NoError(t, fs.Parse([]string{"--queue-depth=0"}))
	assert.Equal(t, 0, c.queueDepth())
}

func TestConfigValidateNamesFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--port=70000"}, "--port"},
		{[]string{"--engine-url=localhost:8000"}, "--engine-url"},
		{[]string{"--engine-url=ftp://x"}, "--engine-url"},
		{[]string{"--engine-health-path=health"}, "--engine-health-path"},
		{[]string{"--engine-metrics-path="}, "--engine-metrics-path"},
		{[]string{"--pod-name="}, "--pod-name"},
		{[]string{"--container-concurrency=-1"}, "--container-concurrency"},
		{[]string{"--max-body-bytes=0"}, "--max-body-bytes"},
		{[]string{"--request-timeout=0s"}, "--request-timeout"},
		{[]string{"--probe-interval=-1s"}, "--probe-interval"},
		{[]string{"--stats-interval=0s"}, "--stats-interval"},
		{[]string{"--drain-timeout=-1s"}, "--drain-timeout"},
		{[]string{"--kv-block-size=-16"}, "--kv-block-size"},
		{[]string{"--kv-block-size=100000"}, "--kv-block-size"},
		{[]string{"--kv-capacity-blocks=-1"}, "--kv-capacity-blocks"},
		{[]string{"--kv-capacity-blocks=100000000"}, "--kv-capacity-blocks"},
		{[]string{"--kv-flush-interval=0s"}, "--kv-flush-interval"},
		{[]string{"--admin-addr=9091"}, "--admin-addr"},
		{[]string{"--admin-addr=127.0.0.1:"}, "--admin-addr"},
		{[]string{"--admin-addr=127.0.0.1:9091\n"}, "--admin-addr"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			var c Config
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			c.RegisterFlags(fs)
			require.NoError(t, fs.Parse(append([]string{"--pod-name=p"}, tc.args...)))
			err := c.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want+":")
			_, err = New(c, nil)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
