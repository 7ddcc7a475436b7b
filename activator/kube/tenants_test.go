package kube

import (
	"bytes"
	"context"
	"encoding/hex"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/tenant"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// logBuffer collects a logger's output; safe for the Sync's goroutine and
// the test's.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func sha256Key(key string) v1alpha1.APIKey {
	d := tenant.Digest(key)
	return v1alpha1.APIKey{SHA256: hex.EncodeToString(d[:])}
}

func secretKey(name, key string) v1alpha1.APIKey {
	return v1alpha1.APIKey{SecretKeyRef: &v1alpha1.SecretKeySelector{Name: name, Key: key}}
}

func tenantObj(name string, keys ...v1alpha1.APIKey) *v1alpha1.Tenant {
	return &v1alpha1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1alpha1.TenantSpec{APIKeys: keys}}
}

func secret(name string, data map[string]string) *corev1.Secret {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Data: map[string][]byte{}}
	for k, v := range data {
		s.Data[k] = []byte(v)
	}
	return s
}

// statusWith is the status of GET /v1/models with a key, from the
// activator's API served at base; 0 when the request fails (it runs in
// Eventually's goroutine, where a test may not fail).
func statusWith(base, key string) int {
	r, err := http.NewRequest(http.MethodGet, base+"/v1/models", nil)
	if err != nil {
		return 0
	}
	r.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// serveAPI serves the activator's API on loopback and returns its base URL.
func serveAPI(t *testing.T, act *activator.Activator) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httpserver.NewFast(act.FastHandler(), httpserver.DefaultLimits(), nil)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// The activator on Kubernetes authenticates with the keys of the Tenants:
// an sha256 as it stands, a secretKeyRef from its Secret (one trailing
// newline dropped) and rotated with it; a Tenant whose Secret is missing,
// or with a fromEnv key, is left out (its keys fail, the others work) with
// a warning naming it and the field; a deleted Tenant's key stops working.
// While Tenants exist and none resolves no key works; with none the API is
// open.
// No key, nor any key's digest, is ever logged.
func TestTenantsFromTheCluster(t *testing.T) {
	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()
	const keyA, keyB1, keyB2, keyC, keyD = "sk-a-0123456789", "sk-b-first-1234", "sk-b-second-567", "sk-c-89abcdef", "sk-d-fedcba98"

	teamA := tenantObj("team-a", sha256Key(keyA))
	require.NoError(t, c.Create(ctx, teamA))
	require.NoError(t, c.Create(ctx, secret("team-b-keys", map[string]string{"k1": keyB1 + "\n", "other": "x"})))
	require.NoError(t, c.Create(ctx, tenantObj("team-b", secretKey("team-b-keys", "k1"))))
	require.NoError(t, c.Create(ctx, tenantObj("team-c", secretKey("team-c-keys", "k1"))))
	require.NoError(t, c.Create(ctx, tenantObj("team-d", sha256Key(keyD), v1alpha1.APIKey{FromEnv: "TEAM_D_KEY"})))

	act, err := activator.New(activator.DefaultConfig(), activator.WithRegisterer(prometheus.NewRegistry()),
		activator.WithStatsStreams(false), activator.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	logs := &logBuffer{}
	sync, err := New(cfg, act, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sync.Run(sctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	base := serveAPI(t, act)
	codes := func(keys ...string) []int {
		out := make([]int, len(keys))
		for i, k := range keys {
			out[i] = statusWith(base, k)
		}
		return out
	}

	require.Eventually(t, func() bool {
		return slices.Equal(codes(keyA, keyB1, keyC, keyD, "sk-unknown"), []int{200, 200, 401, 401, 401})
	}, wait, tick, "sha256 and secretKeyRef work; a missing Secret and a fromEnv fail closed")
	require.Eventually(t, func() bool {
		l := logs.String()
		return strings.Contains(l, "tenant=default/team-c") && strings.Contains(l, "tenant=default/team-d")
	}, wait, tick)
	for _, line := range strings.Split(logs.String(), "\n") {
		switch {
		case strings.Contains(line, "tenant=default/team-c"):
			require.Contains(t, line, "level=WARN")
			require.Contains(t, line, "spec.apiKeys[0].secretKeyRef")
			require.Contains(t, line, "team-c-keys")
		case strings.Contains(line, "tenant=default/team-d"):
			require.Contains(t, line, "level=WARN")
			require.Contains(t, line, "spec.apiKeys[1].fromEnv")
		}
	}

	// Rotation: the Secret's new key works, its old one does not.
	var sec corev1.Secret
	require.NoError(t, c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "team-b-keys"}, &sec))
	sec.Data["k1"] = []byte(keyB2)
	require.NoError(t, c.Update(ctx, &sec))
	require.Eventually(t, func() bool { return slices.Equal(codes(keyB1, keyB2, keyA), []int{401, 200, 200}) }, wait, tick)

	// The missing Secret appears: that tenant's key works.
	require.NoError(t, c.Create(ctx, secret("team-c-keys", map[string]string{"k1": keyC})))
	require.Eventually(t, func() bool { return slices.Equal(codes(keyC), []int{200}) }, wait, tick)

	// A deleted Tenant's key stops working.
	require.NoError(t, c.Delete(ctx, teamA))
	require.Eventually(t, func() bool { return slices.Equal(codes(keyA, keyB2), []int{401, 200}) }, wait, tick)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), `msg="Tenant removed" tenant=default/team-a`) }, wait, tick)

	// Tenants exist but none resolves: closed, not open. No Tenant: open.
	for _, name := range []string{"team-b", "team-c"} {
		require.NoError(t, c.Delete(ctx, tenantObj(name)))
	}
	require.Eventually(t, func() bool { return slices.Equal(codes(keyA, keyB2, keyC, keyD), []int{401, 401, 401, 401}) }, wait, tick)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "no Tenant's API keys resolve") }, wait, tick)
	require.NoError(t, c.Delete(ctx, tenantObj("team-d")))
	require.Eventually(t, func() bool { return slices.Equal(codes(keyA, "anything"), []int{200, 200}) }, wait, tick)

	l := logs.String()
	for _, k := range []string{keyA, keyB1, keyB2, keyC, keyD} {
		require.NotContains(t, l, k, "a key in the logs")
		d := tenant.Digest(k)
		require.NotContains(t, l, hex.EncodeToString(d[:]), "a key's digest in the logs")
	}
}

// A Secret's value is the key less one trailing newline, as a key file
// ends; other white space stays (and the key is then refused).
func TestSecretAPIKey(t *testing.T) {
	for in, want := range map[string]string{
		"sk-1":      "sk-1",
		"sk-1\n":    "sk-1",
		"sk-1\r\n":  "sk-1",
		"sk-1\n\n":  "sk-1\n",
		"sk-1 ":     "sk-1 ",
		"\n":        "",
		"":          "",
		" sk-1\n":   " sk-1",
		"sk-1\rx\n": "sk-1\rx",
	} {
		require.Equal(t, want, SecretAPIKey([]byte(in)), "%q", in)
	}
}

// Two tenants sharing a key are both left out, naming each other; a third
// is unaffected.
func TestWithoutSharedKeys(t *testing.T) {
	shared, own := tenant.Digest("shared"), tenant.Digest("own")
	cfgs := []activator.TenantConfig{
		{Namespace: "a", Name: "x", Keys: [][32]byte{own, shared}},
		{Namespace: "b", Name: "y", Keys: [][32]byte{shared}},
		{Namespace: "c", Name: "z", Keys: [][32]byte{tenant.Digest("z")}},
	}
	problems := map[string]string{}
	got := withoutSharedKeys(cfgs, problems)
	require.Len(t, got, 1)
	require.Equal(t, "z", got[0].Name)
	require.Equal(t, "spec.apiKeys[1]: the same key as a key of tenants a/x, b/y", problems["a/x"])
	require.Equal(t, "spec.apiKeys[0]: the same key as a key of tenants a/x, b/y", problems["b/y"])
	require.NoError(t, activator.ValidateTenants(got))
}
