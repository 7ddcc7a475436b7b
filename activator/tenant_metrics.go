package activator

import (
	"bytes"
	"io"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

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

// Reasons of a refusal, the values of kvasir_tenant_rejected_total's
// reason label: a fixed set, never anything a client sent.
const (
	// rejectRateLimit: a rate limit of the tenant's rule (requests or
	// tokens per minute, a request larger than the limit included); 429.
	rejectRateLimit = "rate_limit"
	// rejectConcurrency: the rule's maxConcurrentRequests; 429.
	rejectConcurrency = "concurrency"
	// rejectLimiterUnavailable: the rate limiter's store failed or timed
	// out under --ratelimit-fail closed; 503.
	rejectLimiterUnavailable = "limiter_unavailable"
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
	rejects      *prometheus.CounterVec
}

func newTenantMetrics() *tenantMetrics {
	return &tenantMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_requests_total",
			Help: "Requests of authenticated tenants, by the tenant's namespace and name, the model they resolved to (\"\" for none) and HTTP status code.",
		}, []string{"namespace", "tenant", "model", "code"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_tokens_total",
			Help: "Tokens of tenants' answers, from the usage the queue-proxies measured (else the one the engines reported in the answer): input (prompt tokens, cached ones included), output (completion tokens) and cached (prompt tokens served from the prefix cache).",
		}, []string{"namespace", "tenant", "model", "kind"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_auth_failures_total",
			Help: "Requests refused 401 while tenants are configured, by reason: missing, malformed, conflicting (two different keys) or unknown key.",
		}, []string{"reason"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_tenant_rejected_total",
			Help: "Requests of tenants refused before they were forwarded, by reason: rate_limit, concurrency (429), limiter_unavailable (503, the rate limiter failing closed).",
		}, []string{"namespace", "tenant", "model", "reason"}),
	}
}

func (m *tenantMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.requests, m.tokens, m.authFailures, m.rejects}
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
func (m *tenantMetrics) used(tn *tenant, model string, u *openai.Usage) {
	if tn == nil || u == nil {
		return
	}
	ns, name := tn.cfg.Namespace, tn.cfg.Name
	m.tokens.WithLabelValues(ns, name, model, tokensInput).Add(float64(u.PromptTokens))
	m.tokens.WithLabelValues(ns, name, model, tokensOutput).Add(float64(u.CompletionTokens))
	if u.PromptTokensDetails != nil {
		m.tokens.WithLabelValues(ns, name, model, tokensCached).Add(float64(u.Cached()))
	}
}

// rejected counts a request of tenant tn (nil: nothing is counted) refused
// before it was forwarded, for one of the reject* reasons; model is the
// configured name it resolved to.
func (m *tenantMetrics) rejected(tn *tenant, model, reason string) {
	if tn == nil {
		return
	}
	m.rejects.WithLabelValues(tn.cfg.Namespace, tn.cfg.Name, model, reason).Inc()
}

// modelLabel is the model a routed request resolved to, as configured: its
// LoRA adapter, or its service's model.
func (rt routed) modelLabel() string {
	if rt.req.Adapter != "" {
		return rt.req.Adapter
	}
	return rt.svc.cfg.Model
}

var (
	usageKey = []byte(`"usage"`)
	deltaKey = []byte(`"delta"`)
	textKey  = []byte(`"text"`)
)

// usageMeter reads the usage of a tenant's answer as it is read from the
// replica, whoever reads it (an HTTP or a WebSocket client), without
// changing a byte of it. It is the fallback of the queue-proxy's exact
// usage (Kvasir-Usage): a stream's usage is that of its last event
// carrying one (the usage chunk, present only when the client asked for
// it, or each chunk's with vLLM's cumulative continuous usage); a whole
// answer is kept up to maxMeteredBody and its top-level usage decoded at
// the end. A stream's content events (those with a "delta" or a "text":
// chat and completion chunks, not the usage chunk, errors or [DONE]) are
// counted, one token each, for a stream cut before its usage came. One
// goroutine reads and closes it.
type usageMeter struct {
	body   io.Reader
	stream bool
	split  openai.EventSplitter
	buf    []byte        // the whole answer so far (not streamed)
	over   bool          // the answer is longer than maxMeteredBody
	last   *openai.Usage // the usage of the last event carrying one (streamed)
	events int64         // content events (streamed)
}

var _ io.Reader = (*usageMeter)(nil)

func (m *usageMeter) Read(p []byte) (int, error) {
	n, err := m.body.Read(p)
	if n > 0 {
		m.see(p[:n])
	}
	return n, err
}

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
	data, ok := openai.EventData(ev)
	if !ok {
		return nil
	}
	if bytes.Contains(data, deltaKey) || bytes.Contains(data, textKey) {
		m.events++
	}
	if bytes.Contains(data, usageKey) {
		if u := openai.UsageOf(data); u != nil {
			m.last = u
		}
	}
	return nil
}

// usage is what the answer reported, or nil.
func (m *usageMeter) usage() *openai.Usage {
	if m.stream {
		return m.last
	}
	if m.over || !bytes.Contains(m.buf, usageKey) {
		return nil
	}
	return openai.UsageOf(m.buf)
}

// usageHeader reads the queue-proxy's usage header (or trailer) of h: one
// value, as openai.FormatUsageHeader writes it. Anything else (absent,
// repeated, malformed: nothing a replica should send) is ignored.
func usageHeader(h *fasthttp.ResponseHeader) (*openai.Usage, bool) {
	v := h.Peek(openai.UsageHeader)
	if v == nil || len(h.PeekAll(openai.UsageHeader)) != 1 {
		return nil, false
	}
	return openai.ParseUsageHeader(string(v))
}

// meterUsage prepares up to tell its answer's usage when it answers a
// tenant's request (rt.tenant nil: the API is open, nothing is read): the
// estimate of its cost, and, for a successful answer without the
// queue-proxy's usage header (a stream, whose usage comes as a trailer, or
// an answer without one), a meter of its body.
func (up *inflight) meterUsage(rt routed) {
	if rt.tenant == nil {
		return
	}
	up.tenant, up.model = rt.tenant, rt.modelLabel()
	if up.adm != nil {
		up.est = up.adm.res.Cost()
	} else {
		up.est, _ = estimateCost(rt.req)
	}
	if up.status/100 != 2 || up.body == nil {
		return
	}
	stream := isEventStream(&up.up.resp.Header)
	if _, ok := usageHeader(&up.up.resp.Header); ok && !stream {
		return // the exact usage is here: no need to read the body
	}
	up.meter = &usageMeter{body: up.body, stream: stream}
	up.body = up.meter
}

// countUsage counts the tokens a successful answer to a tenant reported:
// the queue-proxy's exact usage, else the engine's in the answer.
func (up *inflight) countUsage() {
	if up.tenant != nil && up.status/100 == 2 {
		up.a.metrics.tenant.used(up.tenant, up.model, up.exactUsage())
	}
}
