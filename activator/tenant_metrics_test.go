package activator

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// What the fake engine answers, as a queue-proxy passes it on: a whole
// answer with its usage, or a stream whose usage chunk is there only when
// the client asked for it.
const (
	engineJSON = `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],` +
		`"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":4}}}`
	engineContent = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n"
	engineUsage   = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":1}}}\n\n"
	engineDone    = "data: [DONE]\n\n"
)

func fakeEngine(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Stream        bool `json:"stream"`
		StreamOptions struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	body, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(body, &req)
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, engineJSON)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, engineContent)
	if req.StreamOptions.IncludeUsage {
		_, _ = io.WriteString(w, engineUsage)
	}
	_, _ = io.WriteString(w, engineDone)
}

// tenantRig is an activator with its metrics in reg, serving model llama
// (and its LoRA adapter llama-sql), model other, and model failing whose
// engine answers 500, to authTenants (or none).
type tenantRig struct {
	act *Activator
	reg *prometheus.Registry
	url string
}

func newTenantRig(t *testing.T, tenants []TenantConfig) *tenantRig {
	t.Helper()
	reg := prometheus.NewRegistry()
	act, err := New(DefaultConfig(), WithRegisterer(reg), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	svc := func(name string, adapters ...string) ServiceConfig {
		return ServiceConfig{Namespace: "default", Name: name, Model: name, LoRAAdapters: adapters,
			Traffic: []traffic.Target{{Revision: name + "-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: name + "-1"}}}
	}
	require.NoError(t, act.SetServices([]ServiceConfig{svc("llama", "llama-sql"), svc("other"), svc("failing")}))
	require.NoError(t, act.SetTenants(tenants))
	for _, name := range []string{"llama", "other"} {
		act.SetEndpoints(fleet.Key{Namespace: "default", Service: name, Revision: name + "-1"},
			[]fleet.Endpoint{backend(t, name, fakeEngine)})
	}
	act.SetEndpoints(fleet.Key{Namespace: "default", Service: "failing", Revision: "failing-1"},
		[]fleet.Endpoint{backend(t, "failing", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `{"error":{"message":"engine failed","type":"server_error"}}`)
		})})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httpserver.NewFast(act.FastHandler(), httpserver.DefaultLimits(), nil)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return &tenantRig{act: act, reg: reg, url: "http://" + ln.Addr().String()}
}

func (r *tenantRig) do(t *testing.T, method, path, body string, hdr ...[2]string) (*http.Response, []byte) {
	t.Helper()
	return (&authRig{url: r.url}).do(t, method, path, body, hdr)
}

// value is a series' value, 0 when it does not exist.
func (r *tenantRig) value(name string, labels map[string]string) float64 {
	v, _ := promtest.Value(r.reg, name, labels)
	return v
}

func requestLabels(tenant, model string, code int) map[string]string {
	return map[string]string{"namespace": "default", "tenant": tenant, "model": model, "code": fmt.Sprint(code)}
}

func TestTenantRequestsByCode(t *testing.T) {
	r := newTenantRig(t, authTenants())
	all, llama := bearer(authKeys[0]), bearer(authKeys[1])
	chat := func(model string) string {
		return `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`
	}
	for _, tc := range []struct {
		name, method, path, body string
		key                      [2]string
		tenant, model            string
		code                     int
	}{
		{"served", http.MethodPost, PathChat, chat("llama"), all, "all", "llama", 200},
		{"served by an adapter", http.MethodPost, PathCompletions, chat("llama-sql"), all, "all", "llama-sql", 200},
		{"the engine's error", http.MethodPost, PathChat, chat("failing"), all, "all", "failing", 500},
		{"model not allowed", http.MethodPost, PathChat, chat("other"), llama, "llama", "", 403},
		{"unknown model", http.MethodPost, PathChat, chat("nope"), all, "all", "", 404},
		{"unknown model typed by a client", http.MethodPost, PathChat, chat("sk-all-0123456789"), all, "all", "", 404},
		{"bad JSON", http.MethodPost, PathChat, `{"model":`, all, "all", "", 400},
		{"no model", http.MethodPost, PathChat, `{}`, all, "all", "", 400},
		{"wrong method", http.MethodGet, PathChat, "", all, "all", "", 405},
		{"models", http.MethodGet, PathModels, "", llama, "llama", "", 200},
		{"a model not allowed", http.MethodGet, PathModels + "/other", "", llama, "llama", "", 403},
		{"a model unknown", http.MethodGet, PathModels + "/nope", "", all, "all", "", 404},
		{"unknown path", http.MethodGet, "/v1/nothing", "", all, "all", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			labels := requestLabels(tc.tenant, tc.model, tc.code)
			before := r.value("kvasir_tenant_requests_total", labels)
			resp, _ := r.do(t, tc.method, tc.path, tc.body, tc.key)
			require.Equal(t, tc.code, resp.StatusCode)
			require.Equal(t, before+1, r.value("kvasir_tenant_requests_total", labels))
		})
	}
	requireNoKeyInSeries(t, r.reg)
}

func TestTenantAuthFailures(t *testing.T) {
	r := newTenantRig(t, authTenants())
	for _, tc := range []struct {
		name   string
		hdr    [][2]string
		reason string
	}{
		{"no key", nil, authMissing},
		{"another scheme", [][2]string{{"Authorization", "Basic " + authKeys[0]}}, authMalformed},
		{"bearer without a key", [][2]string{{"Authorization", "Bearer"}}, authMalformed},
		{"two authorizations", [][2]string{bearer(authKeys[0]), bearer(authKeys[0])}, authMalformed},
		{"empty api-key", [][2]string{{"api-key", " "}}, authMalformed},
		{"two different keys", [][2]string{bearer(authKeys[0]), apiKey(authKeys[1])}, authConflicting},
		{"unknown key", [][2]string{bearer("sk-unknown-0123456789")}, authUnknown},
		{"unknown api-key", [][2]string{apiKey("sk-unknown-0123456789")}, authUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			labels := map[string]string{"reason": tc.reason}
			before := r.value("kvasir_tenant_auth_failures_total", labels)
			resp, _ := r.do(t, http.MethodPost, PathChat, `{"model":"llama","messages":[]}`, tc.hdr...)
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
			require.Equal(t, before+1, r.value("kvasir_tenant_auth_failures_total", labels))
		})
	}
	_, found := promtest.Value(r.reg, "kvasir_tenant_requests_total", nil)
	require.False(t, found, "a 401 has no tenant to count it for")
	requireNoKeyInSeries(t, r.reg)
}

func TestTenantTokens(t *testing.T) {
	r := newTenantRig(t, authTenants())
	tokens := func(kind string) float64 {
		return r.value("kvasir_tenant_tokens_total", map[string]string{"namespace": "default", "tenant": "all", "model": "llama", "kind": kind})
	}
	all := bearer(authKeys[0])
	for _, tc := range []struct {
		name, body, answer    string
		input, output, cached float64
	}{
		{"whole answer", `{"model":"llama","messages":[]}`, engineJSON, 7, 3, 4},
		{"stream with usage", `{"model":"llama","messages":[],"stream":true,"stream_options":{"include_usage":true}}`,
			engineContent + engineUsage + engineDone, 5, 2, 1},
		{"stream without usage: nothing measured to count", `{"model":"llama","messages":[],"stream":true}`,
			engineContent + engineDone, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, out, cached := tokens(tokensInput), tokens(tokensOutput), tokens(tokensCached)
			resp, body := r.do(t, http.MethodPost, PathChat, tc.body, all)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, tc.answer, string(body), "the client gets the engine's answer unchanged")
			// Counted when the activator closes the replica's answer, just
			// after the client has read the last byte of it.
			require.Eventually(t, func() bool {
				return tokens(tokensInput) == in+tc.input && tokens(tokensOutput) == out+tc.output &&
					tokens(tokensCached) == cached+tc.cached
			}, 5*time.Second, time.Millisecond, "input %v output %v cached %v", tokens(tokensInput), tokens(tokensOutput), tokens(tokensCached))
		})
	}
}

func TestTenantTokensOverWebSocket(t *testing.T) {
	r := newTenantRig(t, authTenants())
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(r.url, "http")+PathChat,
		http.Header{"Authorization": {"Bearer " + authKeys[1]}})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.WriteMessage(websocket.TextMessage,
		[]byte(`{"model":"llama","messages":[],"stream":true,"stream_options":{"include_usage":true}}`)))
	require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"model":"other","messages":[]}`)))
	for done := 0; done < 2; {
		m := readJSON(t, c)
		if m["type"] == "done" || m["error"] != nil {
			done++
		}
	}
	require.Equal(t, 1.0, r.value("kvasir_tenant_requests_total", requestLabels("llama", "", 403)))
	// The answer is counted as the activator closes it, just after the last
	// message went out.
	require.Eventually(t, func() bool {
		return r.value("kvasir_tenant_requests_total", requestLabels("llama", "llama", 200)) == 1 &&
			r.value("kvasir_tenant_tokens_total", map[string]string{"namespace": "default", "tenant": "llama", "model": "llama",
				"kind": tokensInput}) == 5
	}, 5*time.Second, time.Millisecond)
}

func TestNoTenantSeriesWhenOpen(t *testing.T) {
	r := newTenantRig(t, nil)
	for _, body := range []string{`{"model":"llama","messages":[]}`, `{"model":"nope"}`, `{"model":`,
		`{"model":"llama","messages":[],"stream":true,"stream_options":{"include_usage":true}}`} {
		r.do(t, http.MethodPost, PathChat, body, bearer(authKeys[0]))
	}
	r.do(t, http.MethodGet, PathModels, "")
	fams, err := r.reg.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		require.False(t, strings.HasPrefix(f.GetName(), "kvasir_tenant_"), "series %s while open", f.GetName())
	}
}

// requireNoKeyInSeries checks that no label value of any series holds a key.
func requireNoKeyInSeries(t *testing.T, g prometheus.Gatherer) {
	t.Helper()
	fams, err := g.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				requireNoKey(t, l.GetValue(), f.GetName()+"{"+l.GetName()+"}")
				require.NotContains(t, l.GetValue(), "sk-unknown", f.GetName())
			}
		}
	}
}
