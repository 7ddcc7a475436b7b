package activator

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Per-tenant series: what each authenticated tenant asked for and what it
// was answered, and the tokens its answers used, so that a platform team
// can bill. A tenant is labelled by its namespace and name; a model by the
// name the service (or the LoRA adapter) is configured with, never by what
// a client typed: a request that resolved to no model has model "". With
// no tenant configured (the API open) no series exist and nothing is
// measured: every path starts with a nil check of the request's tenant.

// Reasons of a 401, the values of kvasir_tenant_auth_failures_total's
// reason label: a fixed set, never anything a client sent.
const (
	// authMissing: no key was presented.
	authMissing = "missing"
	// authMalformed: several values of a key header, a scheme other than
	// Bearer, or an empty key.
	authMalformed = "malformed"
	// authConflicting: Authorization and api-key with different keys.
	authConflicting = "conflicting"
	// authUnknown: a key no tenant holds.
	authUnknown = "unknown"
)

// Kinds of tokens, the values of kvasir_tenant_tokens_total's kind label.
const (
	tokensInput  = "input"  // usage.prompt_tokens, cached ones included
	tokensOutput = "output" // usage.completion_tokens
	tokensCached = "cached" // usage.prompt_tokens_details.cached_tokens
)

// maxMeteredBody bounds a non-streamed answer kept to read its usage (the
// queue-proxy's default bound on the answers it measures); a longer one
// passes unmeasured.
const maxMeteredBody = 32 << 20

// tenantMetrics are the per-tenant series.
type tenantMetrics struct {
	requests     *prometheus.CounterVec
	tokens       *prometheus.CounterVec
	authFailures *prometheus.CounterVec
}

func newTenantMetrics() *tenantMetrics {
	return &tenantMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_requests_total",
			Help: "Requests of authenticated tenants, by the tenant's namespace and name, the model they resolved to (\"\" for none) and HTTP status code.",
		}, []string{"namespace", "tenant", "model", "code"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_tokens_total",
			Help: "Tokens of tenants' answers, from the usage the engines reported: input (prompt tokens, cached ones included), output (completion tokens) and cached (prompt tokens served from the prefix cache).",
		}, []string{"namespace", "tenant", "model", "kind"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_auth_failures_total",
			Help: "Requests refused 401 while tenants are configured, by reason: missing, malformed, conflicting (two different keys) or unknown key.",
		}, []string{"reason"}),
	}
}

func (m *tenantMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.tokens, m.authFailures}
}

// request counts a request of tenant tn (nil: the API is open, nothing is
// counted) answered code; model is a configured name or "".
func (m *tenantMetrics) request(tn *tenant, model string, code int) {
	if tn == nil {
		return
	}
	m.requests.WithLabelValues(tn.cfg.Namespace, tn.cfg.Name, model, strconv.Itoa(code)).Inc()
}

// authFailure counts a 401 with one of the auth* reasons.
func (m *tenantMetrics) authFailure(reason string) { m.authFailures.WithLabelValues(reason).Inc() }

// used counts the tokens of an answer to tenant tn.
func (m *tenantMetrics) used(tn *tenant, model string, u *usage) {
	if tn == nil || u == nil {
		return
	}
	ns, name := tn.cfg.Namespace, tn.cfg.Name
	m.tokens.WithLabelValues(ns, name, model, tokensInput).Add(float64(u.PromptTokens))
	m.tokens.WithLabelValues(ns, name, model, tokensOutput).Add(float64(u.CompletionTokens))
	if d := u.PromptTokensDetails; d != nil {
		m.tokens.WithLabelValues(ns, name, model, tokensCached).Add(float64(d.CachedTokens))
	}
}

// modelLabel is the model a routed request resolved to, as configured: its
// LoRA adapter, or its service's model.
func (rt routed) modelLabel() string {
	if rt.req.Adapter != "" {
		return rt.req.Adapter
	}
	return rt.svc.cfg.Model
}

// usage is the part of an OpenAI usage object counted per tenant.
type usage struct {
	PromptTokens        uint64 `json:"prompt_tokens"`
	CompletionTokens    uint64 `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens uint64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

// usageOf decodes the top-level usage of a JSON object (a whole answer, or
// one event of a stream); nil when there is none (absent, null or not an
// object).
func usageOf(obj []byte) *usage {
	o, err := openai.Parse(obj)
	if err != nil {
		return nil
	}
	raw, ok := o.Get("usage")
	if !ok {
		return nil
	}
	var u *usage
	if json.Unmarshal(raw, &u) != nil {
		return nil
	}
	return u
}

var usageKey = []byte(`"usage"`)

// usageMeter reads the usage of a tenant's answer as it is read from the
// replica, whoever reads it (an HTTP or a WebSocket client), without
// changing a byte of it. A stream's usage is that of its last event
// carrying one: the usage chunk, present only when the client asked for it
// (stream_options.include_usage: the queue-proxy hides it otherwise), or
// each chunk's with vLLM's cumulative continuous usage. A whole answer is
// kept up to maxMeteredBody and its top-level usage decoded at the end.
// One goroutine reads and closes it.
type usageMeter struct {
	// tenant and model are whose answer it is.
	tenant *tenant
	model  string
	body   io.ReadCloser
	stream bool
	split  openai.EventSplitter
	buf    []byte // the whole answer so far (not streamed)
	over   bool   // the answer is longer than maxMeteredBody
	last   *usage // the usage of the last event carrying one (streamed)
}

var _ io.ReadCloser = (*usageMeter)(nil)

func (m *usageMeter) Read(p []byte) (int, error) {
	n, err := m.body.Read(p)
	if n > 0 {
		m.see(p[:n])
	}
	return n, err
}

// Close closes the replica's answer.
func (m *usageMeter) Close() error { return m.body.Close() }

func (m *usageMeter) see(p []byte) {
	switch {
	case m.stream:
		_ = m.split.Feed(p, m.event)
	case m.over:
	case len(m.buf)+len(p) > maxMeteredBody:
		m.over, m.buf = true, nil
	default:
		m.buf = append(m.buf, p...)
	}
}

func (m *usageMeter) event(ev []byte) error {
	if data, ok := openai.EventData(ev); ok && bytes.Contains(data, usageKey) {
		if u := usageOf(data); u != nil {
			m.last = u
		}
	}
	return nil
}

// usage is what the answer reported, or nil.
func (m *usageMeter) usage() *usage {
	if m.stream {
		return m.last
	}
	if m.over || !bytes.Contains(m.buf, usageKey) {
		return nil
	}
	return usageOf(m.buf)
}

// meterUsage makes up read its answer's usage when it is a successful
// answer to a tenant's request (rt.tenant nil: the API is open, nothing is
// read).
func (up *inflight) meterUsage(rt routed) {
	if rt.tenant == nil || up.resp.StatusCode/100 != 2 {
		return
	}
	up.meter = &usageMeter{tenant: rt.tenant, model: rt.modelLabel(), body: up.resp.Body, stream: isEventStream(up.resp.Header)}
	up.resp.Body = up.meter
}

// countUsage counts the tokens the answer reported, if it was metered.
func (up *inflight) countUsage() {
	if m := up.meter; m != nil {
		up.a.metrics.tenant.used(m.tenant, m.model, m.usage())
	}
}
