package local

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// Requests are spread over the activator replicas one at a time, each
// replica's series carry its label, and the scaler sees their summed load.
func TestActivatorReplicas(t *testing.T) {
	reg := prometheus.NewRegistry()
	as, err := newActivators(2, activator.DefaultConfig(), reg, activator.WithStatsStreams(false),
		activator.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	t.Cleanup(as.Close)
	sc := activator.ServiceConfig{Namespace: "default", Name: "svc", Model: "m",
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []activator.RevisionConfig{{Name: "m-1"}}}
	require.NoError(t, as.SetServices([]activator.ServiceConfig{sc}))
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	t.Cleanup(backend.Close)
	as.SetEndpoints(sc.Key("m-1"), []fleet.Endpoint{{Name: "r1", Address: strings.TrimPrefix(backend.URL, "http://")}})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fs := httpserver.NewFast(as.Handler(), httpserver.DefaultLimits(), nil)
	go func() { _ = fs.Serve(ln) }()
	t.Cleanup(func() { _ = fs.Close() })
	srv := struct{ URL string }{"http://" + ln.Addr().String()}
	for range 6 {
		resp, err := http.Post(srv.URL+activator.PathChat, "application/json", strings.NewReader(`{"model":"m","messages":[]}`))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	for _, replica := range []string{"0", "1"} {
		n, err := testutil.GatherAndCount(reg, "kvasir_activator_requests_total")
		require.NoError(t, err)
		require.Equal(t, 2, n, "one series per replica")
		mfs, err := reg.Gather()
		require.NoError(t, err)
		var got float64
		for _, mf := range mfs {
			if mf.GetName() != "kvasir_activator_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "activator" && l.GetValue() == replica {
						got += m.GetCounter().GetValue()
					}
				}
			}
		}
		require.Equal(t, 3.0, got, "activator %s served half", replica)
	}
	l, ok := as.Load(sc.Key("m-1"))
	require.True(t, ok)
	require.Equal(t, 1, l.Ready)
	require.Zero(t, l.InFlight)
}
