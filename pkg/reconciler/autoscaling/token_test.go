package autoscaling

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// dialReport opens a report stream as an activator would, with the given
// Authorization header ("" for none), and sends one report if it is let
// in. It returns the HTTP status of the handshake.
func dialReport(t *testing.T, url, authorization string, loads ...stats.RevisionLoad) int {
	t.Helper()
	h := http.Header{}
	if authorization != "" {
		h.Set("Authorization", authorization)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, resp, err := d.Dial(url+stats.ActivatorPath, h)
	if err != nil {
		require.NotNil(t, resp, "%v", err)
		resp.Body.Close()
		return resp.StatusCode
	}
	defer conn.Close()
	data, err := json.Marshal(stats.ActivatorReport{Activator: "intruder", Time: time.Now(), Loads: loads})
	require.NoError(t, err)
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, data))
	return resp.StatusCode
}

// The autoscaler takes reports only from who presents its token: a
// report without it, or with another, is refused with 401 before the
// WebSocket opens and scales nothing; the same demand with the token
// wakes the revision.
func TestReportsNeedTheToken(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	for _, name := range []string{"llama-00001", "qwen-00001"} {
		require.NoError(t, e.c.Create(ctx, newRevision(name, func(*v1alpha1.ModelRevision) {})))
		require.Eventually(t, func() bool { return replicas(t, e.c, name+"-deployment") == 0 }, wait, tick)
	}
	llama := stats.RevisionLoad{Namespace: "default", Service: "llama", Revision: "llama-00001", Buffered: 20}
	for _, auth := range []string{"", "Bearer", "Bearer wrong", "Basic " + e.token, "Bearer " + e.token + "x", "Bearer " + e.token[:len(e.token)-1]} {
		require.Equal(t, http.StatusUnauthorized, dialReport(t, e.url, auth, llama), "Authorization: %q", auth)
	}
	// An activator that holds a stale token keeps being refused.
	stale := func() (string, error) { return "stale", nil }
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		stats.Report(rctx, e.url, stale, 50*time.Millisecond, nil, func() stats.ActivatorReport {
			return stats.ActivatorReport{Activator: "stale", Time: time.Now(), Loads: []stats.RevisionLoad{llama}}
		}, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })

	// Demand for the other revision, with the token, is decided on: by
	// then every refused report above has been too, had it counted.
	reportDemand(t, e, stats.RevisionLoad{Namespace: "default", Service: "qwen", Revision: "qwen-00001", Buffered: 1})
	require.Eventually(t, func() bool { return replicas(t, e.c, "qwen-00001-deployment") == 1 }, wait, tick)
	require.Equal(t, int32(0), replicas(t, e.c, "llama-00001-deployment"), "refused reports scale nothing")
	require.Equal(t, 0.0, gauge(t, e.reg, "kvasir_autoscaler_desired_replicas",
		map[string]string{"namespace": "default", "service": "llama", "revision": "llama-00001", "role": "unified"}))

	// The same demand, with the token (any case of the scheme).
	require.Equal(t, http.StatusSwitchingProtocols, dialReport(t, e.url, "bearer "+e.token, llama))
	require.Eventually(t, func() bool { return replicas(t, e.c, "llama-00001-deployment") > 0 }, wait, tick)
}

// EnsureToken makes the Secret once: a second call, a second replica,
// reads the same token; the token is 32 random bytes, URL-safe.
func TestEnsureTokenIsStable(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	again, err := EnsureToken(ctx, e.c, "kvasir-serving")
	require.NoError(t, err)
	require.Equal(t, e.token, string(again))
	require.Len(t, e.token, 43, "base64url of 32 bytes")
	require.False(t, strings.ContainsAny(e.token, "+/= \n"))
	s := &corev1.Secret{}
	require.NoError(t, e.c.Get(ctx, client.ObjectKey{Namespace: "kvasir-serving", Name: TokenSecretName}, s))
	require.Equal(t, e.token, string(s.Data[TokenSecretKey]))
	other, err := EnsureToken(ctx, e.c, "default")
	require.NoError(t, err)
	require.NotEqual(t, e.token, string(other), "random")
}
