package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/activator/kube"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/tenant"
)

// fakeTarget records the tenants it is given, and what the gate answered
// at that moment.
type fakeTarget struct {
	gate    fasthttp.RequestHandler
	tenants []activator.TenantConfig
	codes   []int // the gate's status while SetTenants ran
}

var _ kube.Target = (*fakeTarget)(nil)

func (f *fakeTarget) SetServices([]activator.ServiceConfig) error { return nil }
func (f *fakeTarget) SetEndpoints(fleet.Key, []fleet.Endpoint)    {}
func (f *fakeTarget) SetTenants(cfgs []activator.TenantConfig) error {
	if f.gate != nil {
		f.codes = append(f.codes, get(f.gate).Code)
	}
	f.tenants = cfgs
	return nil
}

// recorded is what a handler answered.
type recorded struct {
	Code int
	hdr  http.Header
	Body *bytes.Buffer
}

func (r *recorded) Header() http.Header { return r.hdr }

func get(h fasthttp.RequestHandler) *recorded {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(http.MethodGet)
	ctx.Request.SetRequestURI("/v1/models")
	h(&ctx)
	r := &recorded{Code: ctx.Response.StatusCode(), hdr: http.Header{}, Body: bytes.NewBuffer(ctx.Response.Body())}
	for k, v := range ctx.Response.Header.All() {
		r.hdr.Add(string(k), string(v))
	}
	return r
}

var oneTenant = []activator.TenantConfig{{Namespace: "default", Name: "team-a", Keys: [][32]byte{tenant.Digest("k")}}}

// With --require-auth the API answers 503, OpenAI-shaped, until a Tenant
// with a key is loaded, and again once none is; the gate closes before the
// activator stops requiring keys, so no request is served open. Each
// change is logged once.
func TestRequireAuthGate(t *testing.T) {
	var logs strings.Builder
	target := &fakeTarget{}
	g := newAuthGate(target, true, slog.New(slog.NewTextHandler(&logs, nil)))
	next := func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(http.StatusOK) }
	h := g.Handler(next)
	target.gate = h

	w := get(h)
	require.Equal(t, http.StatusServiceUnavailable, w.Code, "before any Tenant is loaded")
	require.Equal(t, "5", w.Header().Get("Retry-After"))
	var env openai.Envelope
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &env))
	require.Equal(t, "api_keys_not_configured", env.Error.Code)
	require.Equal(t, openai.TypeUnavailable, env.Error.Type)
	require.Contains(t, env.Error.Message, "--require-auth")

	require.NoError(t, g.SetTenants(nil))
	require.NoError(t, g.SetTenants(nil))
	require.Equal(t, http.StatusServiceUnavailable, get(h).Code)
	require.NoError(t, g.SetTenants(oneTenant))
	require.Equal(t, http.StatusOK, get(h).Code)
	require.Equal(t, oneTenant, target.tenants)
	require.NoError(t, g.SetTenants(oneTenant))
	require.NoError(t, g.SetTenants(nil))
	require.Equal(t, http.StatusServiceUnavailable, get(h).Code)
	require.Equal(t, []int{503, 503, 503, 200, 503}, target.codes,
		"closed while the first keys load, and before the last ones go")

	l := logs.String()
	require.Equal(t, 2, strings.Count(l, "--require-auth refuses to serve the API open"), l)
	require.Equal(t, 1, strings.Count(l, "API keys required"), l)
	require.NotContains(t, l, "the API is open")
}

// Without --require-auth the gate lets everything through and warns once
// each time the API becomes open.
func TestOpenAPIWarnsOnce(t *testing.T) {
	var logs strings.Builder
	target := &fakeTarget{}
	g := newAuthGate(target, false, slog.New(slog.NewTextHandler(&logs, nil)))
	next := func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(http.StatusTeapot) }
	h := g.Handler(next)
	require.Equal(t, http.StatusTeapot, get(h).Code)
	for _, cfgs := range [][]activator.TenantConfig{nil, nil, oneTenant, oneTenant, nil, nil} {
		require.NoError(t, g.SetTenants(cfgs))
		require.Equal(t, http.StatusTeapot, get(h).Code)
	}
	l := logs.String()
	require.Equal(t, 2, strings.Count(l, "level=WARN msg=\"no Tenant defined: the API is open to anyone who can reach it"), l)
	require.Equal(t, 1, strings.Count(l, "API keys required"), l)
}

// --require-auth needs --kubernetes: static backends have no Tenants.
func TestRequireAuthNeedsKubernetes(t *testing.T) {
	_, err := parseActivatorFlags([]string{"--model", "m", "--backend", "127.0.0.1:1", "--require-auth"}, io.Discard)
	require.ErrorContains(t, err, "--require-auth: only with --kubernetes")
	require.ErrorAs(t, err, &UsageError{})
	f, err := parseActivatorFlags([]string{"--kubernetes", "--require-auth"}, io.Discard)
	require.NoError(t, err)
	require.True(t, f.requireAuth)
}
