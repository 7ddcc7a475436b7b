package e2e

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/testing/hostile"
)

// hostileModel is one always-ready replica of a simulator with no latency,
// so that a long stream fills every buffer on its way at once.
const hostileModel = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: hostile}
spec:
  model: hostile
  template:
    engine:
      type: sim
      # The activator, not the engine, must cut a stream nobody reads; the
      # stream must be far longer than every socket buffer on its way holds.
      args: ["--zero-latency", "--write-timeout=10m", "--max-model-len=1000000", "--kv-blocks=70000"]
    scaling: {minScale: 1, maxScale: 1, initialScale: 1}
`

// The activator's public listener, in front of a real queue-proxy and
// simulator, faces the hostile-client suite (issue 11): among its cases an
// Expect: 100-continue request through the activator and the queue-proxy
// that reads its own answer, and a stream nobody reads, which the activator
// lets go of once its write timeout passes.
func TestHostileClientsThroughTheActivator(t *testing.T) {
	p := startLocal(t, hostileModel, "--header-read-timeout=1s", "--body-read-timeout=1s",
		"--write-timeout=1s", "--max-header-bytes=8192")
	require.Eventually(t, func() bool {
		revs := p.replicasOrNil()
		return len(revs) == 1 && revs[0].Ready == 1
	}, time.Minute, 20*time.Millisecond)
	t.Run("operator endpoints only on the admin listener", func(t *testing.T) {
		for _, path := range []string{"/metrics", "/kvasir/replicas", "/debug/pprof/"} {
			resp, err := http.Get(p.URL + path)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusNotFound, resp.StatusCode, "%s is not on the API's port", path)
			resp, err = http.Get(p.AdminURL + path)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s is on the admin port", path)
		}
	})
	hostile.Run(t, hostile.Target{
		Addr: strings.TrimPrefix(p.URL, "http://"),
		Path: "/v1/completions",
		Body: func(maxTokens int, stream bool) string {
			if maxTokens < 0 {
				maxTokens = 900_000 // about 100 MB of events: far more than the buffers on the way hold
			}
			return `{"model":"hostile","prompt":"hello","max_tokens":` + strconv.Itoa(maxTokens) +
				`,"stream":` + strconv.FormatBool(stream) + `}`
		},
		MaxHeaderBytes: 8192,
		Idle: func() bool {
			v, ok := hostile.Gauge(p.AdminURL+"/metrics", "kvasir_activator_in_flight_requests")
			return ok && v == 0
		},
	})
}
