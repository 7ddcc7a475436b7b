package activator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/httpserver"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	tenantkeys "github.com/kvasir-serving/kvasir/pkg/tenant"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// The keys of the tenants of authRig. Every test checks that none of them
// comes back in an answer or reaches an engine.
var authKeys = []string{"sk-all-0123456789", "sk-llama-0123456789", "sk-canary-0123456789", "sk-adapter-0123456789"}

func authTenants() []TenantConfig {
	mk := func(name, key string, models ...string) TenantConfig {
		return TenantConfig{Namespace: "default", Name: name, Keys: [][32]byte{tenantkeys.Digest(key)},
			Priority: v1alpha1.PriorityStandard, Weight: 1, Models: models}
	}
	return []TenantConfig{
		mk("all", authKeys[0], "*"),
		mk("llama", authKeys[1], "llama"),
		mk("canary", authKeys[2], "llama@canary"),
		mk("adapter", authKeys[3], "llama-sql"),
	}
}

// authRig is an activator serving model llama (revision l-1, tag canary on
// l-2, LoRA adapter llama-sql) and model other, behind the server limits
// of a real listener; its backends record the headers they are sent.
type authRig struct {
	act  *Activator
	url  string
	logs *syncBuf
	mu   sync.Mutex
	seen []http.Header // what the engines received
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newAuthRig(t *testing.T, tenants []TenantConfig, mutate ...func(*Activator)) *authRig {
	t.Helper()
	r := &authRig{logs: &syncBuf{}}
	log := slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false), WithLogger(log))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	require.NoError(t, act.SetServices([]ServiceConfig{
		{Namespace: "default", Name: "llama", Model: "llama", LoRAAdapters: []string{"llama-sql"},
			Traffic:   []traffic.Target{{Revision: "l-1", Percent: 100}, {Revision: "l-2", Tag: "canary"}},
			Revisions: []RevisionConfig{{Name: "l-1"}, {Name: "l-2"}}},
		{Namespace: "default", Name: "other", Model: "other",
			Traffic: []traffic.Target{{Revision: "o-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "o-1"}}},
	}))
	require.NoError(t, act.SetTenants(tenants))
	for _, k := range []struct{ svc, rev string }{{"llama", "l-1"}, {"llama", "l-2"}, {"other", "o-1"}} {
		ep := backend(t, k.rev, func(w http.ResponseWriter, req *http.Request) {
			r.mu.Lock()
			r.seen = append(r.seen, req.Header.Clone())
			r.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"served_by":%q}`, k.rev)
		})
		act.SetEndpoints(fleet.Key{Namespace: "default", Service: k.svc, Revision: k.rev}, []fleet.Endpoint{ep})
	}
	r.act = act
	for _, m := range mutate {
		m(act)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := httpserver.NewFast(act.FastHandler(), httpserver.DefaultLimits(), log)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	r.url = "http://" + ln.Addr().String()
	return r
}

// do sends a request with the given headers (each name may repeat).
func (r *authRig) do(t *testing.T, method, path, body string, hdr [][2]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, r.url+path, strings.NewReader(body))
	require.NoError(t, err)
	for _, h := range hdr {
		req.Header.Add(h[0], h[1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// requireNoKey checks that no key shows in s.
func requireNoKey(t *testing.T, s, what string) {
	t.Helper()
	for _, k := range authKeys {
		require.NotContains(t, s, k, what+" holds a key")
	}
}

func bearer(k string) [2]string { return [2]string{"Authorization", "Bearer " + k} }
func apiKey(k string) [2]string { return [2]string{"api-key", k} }

func TestAuthenticateAndAuthorise(t *testing.T) {
	r := newAuthRig(t, authTenants())
	chat := func(model string) string { return `{"model":"` + model + `","messages":[]}` }
	all, llama, canary, adapter := authKeys[0], authKeys[1], authKeys[2], authKeys[3]
	for _, tc := range []struct {
		name  string
		model string
		hdr   [][2]string
		code  int
		err   string // the OpenAI error code
	}{
		{"bearer", "llama", [][2]string{bearer(all)}, 200, ""},
		{"bearer, scheme in lower case", "llama", [][2]string{{"Authorization", "bearer " + all}}, 200, ""},
		{"api-key", "llama", [][2]string{apiKey(all)}, 200, ""},
		{"both headers, one key", "llama", [][2]string{bearer(all), apiKey(all)}, 200, ""},
		{"missing", "llama", nil, 401, "invalid_api_key"},
		{"unknown", "llama", [][2]string{bearer("sk-unknown")}, 401, "invalid_api_key"},
		{"Bearer without a key", "llama", [][2]string{{"Authorization", "Bearer"}}, 401, "invalid_api_key"},
		{"Bearer and blanks", "llama", [][2]string{{"Authorization", "Bearer   "}}, 401, "invalid_api_key"},
		{"Basic", "llama", [][2]string{{"Authorization", "Basic " + all}}, 401, "invalid_api_key"},
		{"empty api-key", "llama", [][2]string{{"api-key", ""}}, 401, "invalid_api_key"},
		{"two Authorization headers", "llama", [][2]string{bearer(all), bearer(all)}, 401, "invalid_api_key"},
		{"two api-key headers", "llama", [][2]string{apiKey(all), apiKey(all)}, 401, "invalid_api_key"},
		{"both headers differ", "llama", [][2]string{bearer(all), apiKey(llama)}, 401, "invalid_api_key"},
		{"both headers differ, one unknown", "llama", [][2]string{bearer("sk-unknown"), apiKey(all)}, 401, "invalid_api_key"},

		{"a model", "llama", [][2]string{bearer(llama)}, 200, ""},
		{"a model: its tags", "llama@canary", [][2]string{bearer(llama)}, 200, ""},
		{"a model: its tags by header", "llama", [][2]string{bearer(llama), {TagHeader, "canary"}}, 200, ""},
		{"a model: not its adapter", "llama-sql", [][2]string{bearer(llama)}, 403, "model_not_allowed"},
		{"a model: not another", "other", [][2]string{bearer(llama)}, 403, "model_not_allowed"},
		{"a model: 403 before 404", "nonexistent", [][2]string{bearer(llama)}, 403, "model_not_allowed"},
		{"all: 404 for what does not exist", "nonexistent", [][2]string{bearer(all)}, 404, "model_not_found"},
		{"a tag", "llama@canary", [][2]string{bearer(canary)}, 200, ""},
		{"a tag by header", "llama", [][2]string{bearer(canary), {TagHeader, "canary"}}, 200, ""},
		{"a tag: not the model", "llama", [][2]string{bearer(canary)}, 403, "model_not_allowed"},
		{"a tag: not another tag", "llama@stable", [][2]string{bearer(canary)}, 403, "model_not_allowed"},
		{"a tag: not the adapter", "llama-sql", [][2]string{bearer(canary), {TagHeader, "canary"}}, 403, "model_not_allowed"},
		{"an adapter", "llama-sql", [][2]string{apiKey(adapter)}, 200, ""},
		{"an adapter: not its base model", "llama", [][2]string{apiKey(adapter)}, 403, "model_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := r.do(t, http.MethodPost, PathChat, chat(tc.model), tc.hdr)
			require.Equal(t, tc.code, resp.StatusCode, string(body))
			requireNoKey(t, string(body), "the answer")
			if tc.err == "" {
				return
			}
			requireOpenAIError(t, body, tc.err)
			var env openai.Envelope
			require.NoError(t, json.Unmarshal(body, &env))
			switch tc.code {
			case 401, 403:
				require.Equal(t, openai.TypeInvalidRequest, env.Error.Type)
			}
			switch tc.code {
			case 401:
				require.Equal(t, `Bearer realm="kvasir"`, resp.Header.Get("WWW-Authenticate"))
			case 403:
				require.Contains(t, env.Error.Message, "`"+tc.model+"`", "the message names the model")
			}
		})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	require.NotEmpty(t, r.seen)
	for _, h := range r.seen {
		require.Empty(t, h.Values("Authorization"), "a tenant's key is not forwarded to engines")
		require.Empty(t, h.Values(APIKeyHeader), "a tenant's key is not forwarded to engines")
	}
	requireNoKey(t, r.logs.String(), "the log")
}

func TestEveryEndpointNeedsAKey(t *testing.T) {
	r := newAuthRig(t, authTenants())
	for _, ep := range []struct{ method, path string }{
		{http.MethodPost, PathChat}, {http.MethodPost, PathCompletions}, {http.MethodPost, PathEmbeddings},
		{http.MethodGet, PathModels}, {http.MethodGet, PathModels + "/llama"}, {http.MethodGet, "/v1/unknown"},
	} {
		resp, body := r.do(t, ep.method, ep.path, `{"model":"llama"}`, nil)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, ep.path)
		requireOpenAIError(t, body, "invalid_api_key")
	}
	// An upgrade header does not open /v1/models.
	resp, body := r.do(t, http.MethodGet, PathModels, "", [][2]string{{"Upgrade", "websocket"}, {"Connection", "Upgrade"}})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, string(body))
}

func TestNoTenantsIsOpen(t *testing.T) {
	r := newAuthRig(t, nil)
	resp, body := r.do(t, http.MethodPost, PathChat, `{"model":"llama","messages":[]}`, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	resp, body = r.do(t, http.MethodGet, PathModels, "", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Equal(t, []string{"llama", "llama-sql", "other"}, modelIDs(t, body))

	require.NoError(t, r.act.SetTenants(authTenants()))
	resp, _ = r.do(t, http.MethodPost, PathChat, `{"model":"llama","messages":[]}`, nil)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "tenants set at run time apply at once")
	require.NoError(t, r.act.SetTenants(nil))
	resp, _ = r.do(t, http.MethodPost, PathChat, `{"model":"llama","messages":[]}`, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "no tenants: open again")
}

func modelIDs(t *testing.T, body []byte) []string {
	t.Helper()
	var list modelList
	require.NoError(t, json.Unmarshal(body, &list), string(body))
	ids := []string{}
	for _, e := range list.Data {
		ids = append(ids, e.ID)
	}
	sort.Strings(ids)
	return ids
}

func TestModelsListedPerTenant(t *testing.T) {
	r := newAuthRig(t, authTenants())
	for key, want := range map[string][]string{
		authKeys[0]: {"llama", "llama-sql", "other"},
		authKeys[1]: {"llama"},
		authKeys[2]: {"llama@canary"},
		authKeys[3]: {"llama-sql"},
	} {
		resp, body := r.do(t, http.MethodGet, PathModels, "", [][2]string{bearer(key)})
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Equal(t, want, modelIDs(t, body))
	}
	resp, body := r.do(t, http.MethodGet, PathModels+"/other", "", [][2]string{bearer(authKeys[1])})
	require.Equal(t, http.StatusForbidden, resp.StatusCode, string(body))
	requireOpenAIError(t, body, "model_not_allowed")
	resp, body = r.do(t, http.MethodGet, PathModels+"/llama@canary", "", [][2]string{bearer(authKeys[2])})
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
}

func TestHugeKeyHeaderRefusedByTheServer(t *testing.T) {
	r := newAuthRig(t, authTenants())
	// Eight times the header limit: the client is still sending when the
	// server answers, and reads the 431 because the server lingers (sends
	// its answer's end, reads what the client still sends) before it closes.
	huge := authKeys[0] + strings.Repeat("k", 8*httpserver.DefaultLimits().MaxHeaderBytes)
	resp, _ := r.do(t, http.MethodPost, PathChat, `{"model":"llama","messages":[]}`, [][2]string{bearer(huge)})
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	require.NotContains(t, r.logs.String(), "kkkkkkkk", "nothing of the header is logged")
	requireNoKey(t, r.logs.String(), "the log")
}

func TestTenantInTheContext(t *testing.T) {
	r := newAuthRig(t, authTenants())
	resp, body := r.do(t, http.MethodPost, PathChat, `{"model":"llama"}`,
		[][2]string{{"Authorization", "Bearer " + authKeys[1]}, {"X-Custom", "kept"}})
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	r.mu.Lock()
	seen := r.seen[len(r.seen)-1]
	r.mu.Unlock()
	require.Empty(t, seen.Get("Authorization"), "the key leaves the request")
	require.Equal(t, "kept", seen.Get("X-Custom"))

	tn, ok := r.act.tenants.Load().lookup(authKeys[1])
	require.True(t, ok)
	got, ok := TenantFrom(&clientCtx{tenant: tn})
	require.True(t, ok)
	require.Equal(t, "llama", got.Name)
	_, ok = TenantFrom(&clientCtx{})
	require.False(t, ok, "no tenant without authentication")
	_, ok = TenantFrom(context.Background())
	require.False(t, ok)
}

func TestSetTenantsRefusesASharedKey(t *testing.T) {
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	ts := authTenants()
	ts[1].Keys = append(ts[1].Keys, tenantkeys.Digest(authKeys[0]))
	err = act.SetTenants(ts)
	require.ErrorContains(t, err, `API key 1 is also a key of tenant "default/all"`)
	requireNoKey(t, err.Error(), "the error")
	require.Error(t, act.SetTenants(append(authTenants(), authTenants()[0])), "a tenant twice")
	require.Error(t, act.SetTenants([]TenantConfig{{Name: "none"}}), "a tenant without keys")
	require.True(t, act.tenants.Load().open(), "on error nothing changes")
}

func TestTenantConfigOf(t *testing.T) {
	tn := &v1alpha1.Tenant{}
	tn.Namespace, tn.Name = "ns", "team-a"
	d := [][32]byte{tenantkeys.Digest("k")}
	tc := TenantConfigOf(tn, d)
	require.Equal(t, TenantConfig{Namespace: "ns", Name: "team-a", Keys: d, Priority: v1alpha1.PriorityStandard,
		Weight: 1, Models: []string{"*"}}, tc)
	w := int32(3)
	tn.Spec = v1alpha1.TenantSpec{Priority: v1alpha1.PriorityCritical, Weight: &w, Models: []string{"llama"}}
	tc = TenantConfigOf(tn, d)
	require.Equal(t, int32(3), tc.Weight)
	require.Equal(t, v1alpha1.PriorityCritical, tc.Priority)
	require.Equal(t, []string{"llama"}, tc.Models)
}

// wsURL is the WebSocket URL of path.
func (r *authRig) wsURL(path string) string { return "ws" + strings.TrimPrefix(r.url, "http") + path }

func readJSON(t *testing.T, c *websocket.Conn) map[string]any {
	t.Helper()
	_, msg, err := c.ReadMessage()
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(msg, &m), string(msg))
	return m
}

func wsErrorCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

// requireClosed reads until the connection closes and checks its code.
func requireClosed(t *testing.T, c *websocket.Conn, code int) {
	t.Helper()
	for {
		if _, _, err := c.ReadMessage(); err != nil {
			require.True(t, websocket.IsCloseError(err, code), "closed with %d: %v", code, err)
			return
		}
	}
}

func TestWebSocketHeaderAuth(t *testing.T) {
	r := newAuthRig(t, authTenants())
	_, resp, err := websocket.DefaultDialer.Dial(r.wsURL(PathChat), http.Header{"Authorization": {"Bearer sk-unknown"}})
	require.Error(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a wrong key on the upgrade: 401 before it")

	c, _, err := websocket.DefaultDialer.Dial(r.wsURL(PathChat), http.Header{"Authorization": {"Bearer " + authKeys[1]}})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"model":"llama","messages":[],"request_id":1}`)))
	require.Equal(t, "l-1", readJSON(t, c)["served_by"])
	require.Equal(t, "done", readJSON(t, c)["type"])
	require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"model":"other","messages":[],"request_id":2}`)))
	m := readJSON(t, c)
	require.Equal(t, "model_not_allowed", wsErrorCode(m), m)
	require.Equal(t, 2.0, m["request_id"])
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, h := range r.seen {
		require.Empty(t, h.Values("Authorization"), "the upgrade's key is not forwarded")
	}
}

func TestWebSocketFirstMessageAuth(t *testing.T) {
	r := newAuthRig(t, authTenants())
	dial := func() *websocket.Conn {
		c, _, err := websocket.DefaultDialer.Dial(r.wsURL(PathChat), nil)
		require.NoError(t, err, "a browser's upgrade has no key: the first message may give it")
		t.Cleanup(func() { c.Close() })
		return c
	}

	t.Run("ok", func(t *testing.T) {
		c := dial()
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","api_key":"`+authKeys[0]+`"}`)))
		require.Equal(t, map[string]any{"type": "auth", "ok": true}, readJSON(t, c))
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"model":"other","messages":[]}`)))
		require.Equal(t, "o-1", readJSON(t, c)["served_by"])
	})
	t.Run("request before auth", func(t *testing.T) {
		c := dial()
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"model":"llama","messages":[],"request_id":"r1"}`)))
		m := readJSON(t, c)
		require.Equal(t, "invalid_api_key", wsErrorCode(m), m)
		require.Equal(t, "r1", m["request_id"])
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`not json`)))
		require.Equal(t, "invalid_api_key", wsErrorCode(readJSON(t, c)))
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","api_key":"`+authKeys[1]+`"}`)))
		require.Equal(t, true, readJSON(t, c)["ok"], "auth after a refused request")
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"model":"other","messages":[]}`)))
		require.Equal(t, "model_not_allowed", wsErrorCode(readJSON(t, c)), "the tenant's models hold")
	})
	t.Run("wrong key", func(t *testing.T) {
		c := dial()
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","api_key":"sk-wrong"}`)))
		m := readJSON(t, c)
		require.Equal(t, "invalid_api_key", wsErrorCode(m), m)
		requireClosed(t, c, websocket.ClosePolicyViolation)
	})
	t.Run("no key in the auth message", func(t *testing.T) {
		c := dial()
		require.NoError(t, c.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth"}`)))
		require.Equal(t, "invalid_api_key", wsErrorCode(readJSON(t, c)))
		requireClosed(t, c, websocket.ClosePolicyViolation)
	})
	t.Run("no message within the bound", func(t *testing.T) {
		r := newAuthRig(t, authTenants(), func(a *Activator) { a.authTimeout = 50 * time.Millisecond })
		c, _, err := websocket.DefaultDialer.Dial(r.wsURL(PathChat), nil)
		require.NoError(t, err)
		defer c.Close()
		m := readJSON(t, c)
		require.Equal(t, "invalid_api_key", wsErrorCode(m), m)
		requireClosed(t, c, websocket.ClosePolicyViolation)
	})
	requireNoKey(t, r.logs.String(), "the log")
}
