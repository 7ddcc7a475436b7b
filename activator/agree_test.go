package activator_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/sim"
	"github.com/kvasir-serving/kvasir/pkg/sim/simtest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
	"github.com/kvasir-serving/kvasir/queueproxy"
)

// replica runs a zero-latency simulator and a queue-proxy in front of it,
// in-process on loopback, and returns the queue-proxy and its address.
func replica(t *testing.T, name string) (*queueproxy.Proxy, string) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	simURL := simtest.Start(t, simConfig("unified"))

	var qcfg queueproxy.Config
	fs := flag.NewFlagSet("qp", flag.ContinueOnError)
	qcfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"--engine-url=" + simURL, "--pod-name=" + name,
		"--probe-interval=10ms", "--stats-interval=50ms", "--scrape-interval=50ms", "--drain-quiet-period=0s"}))
	qp, err := queueproxy.New(qcfg, log)
	require.NoError(t, err)
	qpDone := make(chan struct{})
	go func() { defer close(qpDone); _ = qp.Run(ctx) }()
	qpAddr, err := qp.Start("127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() {
		cancel()
		<-qpDone
		_ = qp.Close()
	})
	return qp, qpAddr
}

// Two activators following the same queue-proxies hold the same prefix
// index, although only one of them routes (and speculates).
func TestTwoActivatorsAgree(t *testing.T) {
	qp1, addr1 := replica(t, "r1")
	qp2, addr2 := replica(t, "r2")
	eps := []fleet.Endpoint{{Name: "r1", Address: addr1}, {Name: "r2", Address: addr2}}
	key := fleet.Key{Namespace: "default", Service: "svc", Revision: "m-1"}
	var acts [2]*activator.Activator
	for i := range acts {
		a, err := activator.New(activator.DefaultConfig(), activator.WithRegisterer(prometheus.NewRegistry()),
			activator.WithLogger(slog.New(slog.DiscardHandler)))
		require.NoError(t, err)
		t.Cleanup(a.Close)
		require.NoError(t, a.SetServices([]activator.ServiceConfig{{Namespace: "default", Name: "svc", Model: "m",
			Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []activator.RevisionConfig{{Name: "m-1"}}}}))
		a.SetEndpoints(key, eps)
		acts[i] = a
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fs := httpserver.NewFast(acts[0].FastHandler(), httpserver.DefaultLimits(), nil)
	go func() { _ = fs.Serve(ln) }()
	t.Cleanup(func() { _ = fs.Close() })
	srv := struct{ URL string }{"http://" + ln.Addr().String()}
	// Both follow both streams before traffic (each starts with a snapshot).
	for _, a := range acts {
		require.Eventually(t, func() bool {
			for _, ep := range eps {
				if info, ok := a.Index(key).Pod(ep.Name); !ok || !info.Synced {
					return false
				}
			}
			return true
		}, 10*time.Second, 10*time.Millisecond)
	}

	for g := range 6 {
		system := strings.Repeat(fmt.Sprintf("System prompt of group %d. ", g), 40)
		for q := range 3 {
			body := fmt.Sprintf(`{"model":"m","max_tokens":2,"messages":[{"role":"system","content":%q},{"role":"user","content":"question %d"}]}`, system, q)
			resp, err := http.Post(srv.URL+activator.PathChat, "application/json", strings.NewReader(body))
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
		}
	}
	// The streams are asynchronous: wait until both indexes hold what the
	// queue-proxies' models hold.
	var last [2]map[string][]uint64
	require.Eventually(t, func() bool {
		last[0], last[1] = acts[0].Index(key).Confirmed(), acts[1].Index(key).Confirmed()
		for _, l := range last {
			if len(l["r1"]) != qp1.KVBlocks() || len(l["r2"]) != qp2.KVBlocks() {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "indexes: %d+%d and %d+%d blocks, queue-proxies %d+%d",
		len(last[0]["r1"]), len(last[0]["r2"]), len(last[1]["r1"]), len(last[1]["r2"]), qp1.KVBlocks(), qp2.KVBlocks())
	require.Equal(t, last[0], last[1])
	// Each group went to one replica: six system prompts of ~270 tokens
	// (16 blocks of 16), plus questions.
	require.GreaterOrEqual(t, len(last[0]["r1"])+len(last[0]["r2"]), 6*16)
}

func simConfig(role string) sim.Config {
	return simtest.Config(func(c *sim.Config) { c.Model, c.Role = "m", role })
}

// newSim runs a simulator in-process until the test ends and returns its
// handler.
func newSim(t *testing.T, cfg sim.Config) http.Handler { return simtest.Handler(t, cfg) }
