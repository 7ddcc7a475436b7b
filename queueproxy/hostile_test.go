package queueproxy

import (
	"strconv"
	"testing"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/testing/hostile"
)

// The queue-proxy's listener faces the hostile-client suite in front of a
// real simulator.
func TestHostileClients(t *testing.T) {
	engine := simtest.Start(t, simtest.Config(func(c *sim.Config) {
		c.Model = "m"
		// The stream nobody reads must be far longer than the socket
		// buffers on its way hold, and the engine must not cut it first.
		c.MaxModelLen, c.KVBlocks, c.WriteTimeout = 1_000_000, 70_000, 10*time.Minute
	}))
	addr, _, _ := startMain(t, "--engine-url="+engine, "--header-read-timeout=1s", "--body-read-timeout=1s",
		"--write-timeout=500ms", "--max-header-bytes=8192")
	hostile.Run(t, hostile.Target{
		Addr: addr,
		Path: "/v1/completions",
		Body: func(maxTokens int, stream bool) string {
			if maxTokens < 0 {
				maxTokens = 900_000 // about 100 MB of events
			}
			return `{"model":"m","prompt":"hello","max_tokens":` + strconv.Itoa(maxTokens) + `,"stream":` + strconv.FormatBool(stream) + `}`
		},
		MaxHeaderBytes: 8192,
		Idle: func() bool {
			v, ok := hostile.Gauge("http://"+addr+MetricsPath, "kvasir_queueproxy_in_flight")
			return ok && v == 0
		},
	})
}
