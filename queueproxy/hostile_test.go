package queueproxy

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/testing/hostile"
)

// engineRunning reads vllm:num_requests_running from an engine's metrics.
func engineRunning(t *testing.T, engineURL string) float64 {
	t.Helper()
	resp, err := http.Get(engineURL + "/metrics")
	if err != nil {
		t.Errorf("engine metrics: %v", err)
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "vllm:num_requests_running") {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err == nil {
				return v
			}
		}
	}
	t.Errorf("engine metrics: no vllm:num_requests_running")
	return -1
}

// The queue-proxy's listener faces the hostile-client suite in front of a
// real simulator.
func TestHostileClients(t *testing.T) {
	engine := simtest.Start(t, simtest.Config(func(c *sim.Config) { c.Model = "m" }))
	addr, _, _ := startMain(t, "--engine-url="+engine, "--header-read-timeout=300ms", "--body-read-timeout=300ms",
		"--write-timeout=500ms", "--max-header-bytes=8192")
	hostile.Run(t, hostile.Target{
		Addr: addr,
		Path: "/v1/completions",
		Body: func(maxTokens int, stream bool) string {
			if maxTokens < 0 {
				maxTokens = 30000 // far more than the socket buffers hold
			}
			return `{"model":"m","prompt":"hello","max_tokens":` + strconv.Itoa(maxTokens) + `,"stream":` + strconv.FormatBool(stream) + `}`
		},
		MaxHeaderBytes: 8192,
		Idle:           func() bool { return engineRunning(t, engine) == 0 },
	})
}
