package activator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
)

// Rate limits (issue 15). A tenant's request whose model has a limit rule
// (auth.go: the rule of name@tag, else of the name, else "*") reserves its
// estimated cost with the rate limiter after it is routed (the model is
// allowed) and before it is dispatched:
//
//   - 1 request;
//   - input tokens: the prompt's tokens when the activator has them from a
//     tokenizer file, else the canonical prompt's bytes / 4 (the
//     simulator's own count; an estimate for other engines, which the
//     exact usage corrects), an embedding's input bytes / 4; at least 1;
//   - output tokens: max_completion_tokens, else max_tokens, else
//     DefaultOutputTokens, times n (the choices asked for, at most
//     maxChoices); 0 for embeddings.
//
// A denial is answered 429 as OpenAI does (type "requests" or "tokens",
// code rate_limit_exceeded, Retry-After, retry-after-ms and the
// x-ratelimit-* headers); a request larger than a limit itself, 429
// "Request too large"; the limiter's store failing under fail closed, 503
// limiter_unavailable with Retry-After 1. An allowed request's answer,
// success or error, carries the x-ratelimit-* headers.
//
// When the request ends, the reservation is settled with what it used:
// the queue-proxy's exact usage (Kvasir-Usage, a header on whole answers, a
// trailer on streams), else the engine's usage in the answer, else, for a
// stream cut before its end (the client left, so the trailer never came),
// the reserved input and one output token per content event the replica
// sent (the streaming granularity of vLLM and of the simulator). A request
// that failed before an engine had it (no replica, buffer timeout or full,
// the replica's 502/503) gives everything back; one an engine had when the
// client left before the answer keeps its input; one that timed out at the
// engine keeps its whole reservation; an engine's refusal (an error answer
// without usage) keeps the request and gives the tokens back.

// WithRateLimiter makes the activator enforce its tenants' limit rules
// with l (one per process: the activators of one process share it, and so
// its backend). Without it, rules are kept but not enforced.
func WithRateLimiter(l *ratelimit.Limiter) Option { return func(a *Activator) { a.limiter = l } }

// DefaultOutputTokens is what a chat or completion request without
// max_completion_tokens or max_tokens reserves for its output (per choice);
// its exact usage settles the difference.
const DefaultOutputTokens = 256

const (
	// maxUsageTokens bounds the tokens of one request in either direction
	// (a reservation's output bound, a usage settled): no context window
	// is near it, and a forged usage cannot push a tenant's buckets
	// further than it.
	maxUsageTokens = 1 << 24
	// maxChoices bounds n in the output estimate.
	maxChoices = 128
	// codeRateLimit is the error code of every 429 of a limit, as OpenAI's.
	codeRateLimit = "rate_limit_exceeded"
)

// spentKind is what of its reservation a request that failed may have used.
type spentKind uint8

const (
	// spentNone: no engine had the request; everything is refunded.
	spentNone spentKind = iota
	// spentInput: an engine had the request when the client left before
	// its answer; the input is kept, the output refunded.
	spentInput
	// spentAll: an engine had the request for the whole timeout; nothing
	// is refunded.
	spentAll
)

// admission is an allowed request's reservation, held until it ends.
type admission struct {
	lim *ratelimit.Limiter
	res *ratelimit.Reservation
	// d is the decision, for the x-ratelimit-* headers of the answer.
	d ratelimit.Decision
	// boundOut: the output reserved is the request's own bound, which no
	// engine exceeds, so a usage above it is capped to it.
	boundOut bool
}

// admit reserves rt's cost when its tenant has a limit rule for its model
// and the activator a limiter, and sets rt.adm; a refusal is the failure
// to answer with (counted in kvasir_tenant_rejected_total).
func (a *Activator) admit(ctx context.Context, rt *routed) *failure {
	if a.limiter == nil || rt.tenant == nil {
		return nil
	}
	model, limits, ok := rt.tenant.limitFor(rt.name, rt.tag)
	if !ok {
		return nil
	}
	if rt.rev.cfg.Tokenizer.Type == v1alpha1.TokenizerFile {
		a.tokenize(ctx, *rt, rt.svc.cfg.Model, nil) // local, no I/O: exact input tokens
	}
	cost, bound := estimateCost(rt.req)
	key := ratelimit.Key{Namespace: rt.tenant.cfg.Namespace, Tenant: rt.tenant.cfg.Name, Model: model}
	d, err := a.limiter.Reserve(ctx, key, limits, cost)
	if err != nil {
		if ctx.Err() != nil {
			return &failure{status: 499, err: openai.Err(openai.TypeInvalidRequest, "client_closed", "client closed the request")}
		}
		a.log.Error("rate limit reservation refused", slog.String("namespace", key.Namespace),
			slog.String("tenant", key.Tenant), slog.Any("error", err))
		return &failure{status: http.StatusInternalServerError, err: openai.Err(openai.TypeServer, "internal_error",
			"the rate limit could not be checked")}
	}
	if !d.Allowed {
		reason := rejectRateLimit
		switch {
		case d.Unavailable:
			reason = rejectLimiterUnavailable
		case d.Denied == ratelimit.LimitConcurrency:
			reason = rejectConcurrency
		}
		a.metrics.tenant.rejected(rt.tenant, rt.modelLabel(), reason)
		h := http.Header{}
		ratelimit.WriteHeaders(h, d)
		return &failure{status: d.StatusCode(), err: limitError(rt.name, limits, cost, d), header: h}
	}
	rt.adm = &admission{lim: a.limiter, res: d.Reservation, d: d, boundOut: bound}
	return nil
}

// estimateCost is what a request reserves (see the comment at the top);
// bound reports that its output is the request's own bound.
func estimateCost(req *scheduler.Request) (c ratelimit.Cost, bound bool) {
	c.Requests = 1
	switch {
	case req.Tokens != nil:
		c.InputTokens = int64(len(req.Tokens))
	default:
		if text, err := req.Text(); err == nil {
			c.InputTokens = int64(prompt.TokenCount(text))
		} else if raw, ok := req.Body.Get("input"); ok {
			c.InputTokens = int64(prompt.TokenCount(raw))
		} else {
			c.InputTokens = int64(prompt.TokenCount(req.Body.Raw()))
		}
	}
	c.InputTokens = max(c.InputTokens, 1)
	if req.API == scheduler.APIEmbeddings {
		return c, true
	}
	out, bound := int64(DefaultOutputTokens), false
	for _, f := range []string{"max_completion_tokens", "max_tokens"} {
		if n, ok := intField(req.Body, f); ok && n >= 0 {
			out, bound = min(n, maxUsageTokens), true
			break
		}
	}
	if n, ok := intField(req.Body, "n"); ok && n > 1 {
		out *= min(n, maxChoices)
	}
	c.OutputTokens = out
	return c, bound
}

// intField reads a field that is a JSON integer.
func intField(obj openai.Object, name string) (int64, bool) {
	raw, ok := obj.Get(name)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	return n, err == nil
}

// limitError is the OpenAI error of a refusal, worded as OpenAI's.
func limitError(model string, limits ratelimit.Limits, cost ratelimit.Cost, d ratelimit.Decision) openai.Error {
	switch {
	case d.Unavailable:
		return openai.Err(openai.TypeUnavailable, "limiter_unavailable",
			"the rate limiter cannot decide right now; please try again in a second")
	case d.Denied == ratelimit.LimitConcurrency:
		return openai.Err("requests", codeRateLimit, fmt.Sprintf(
			"Too many concurrent requests for model `%s`: Limit %d. Please try again when one of your requests has finished.",
			model, limits.MaxConcurrentRequests))
	}
	typ, what, limit, asked := "tokens", "", int64(0), int64(0)
	switch d.Denied {
	case ratelimit.LimitRequests:
		typ, what, limit, asked = "requests", "requests per min (RPM)", limits.RequestsPerMinute, cost.Requests
	case ratelimit.LimitTokens:
		what, limit, asked = "tokens per min (TPM)", limits.TokensPerMinute, cost.InputTokens+cost.OutputTokens
	case ratelimit.LimitInputTokens:
		what, limit, asked = "input tokens per min (ITPM)", limits.InputTokensPerMinute, cost.InputTokens
	case ratelimit.LimitOutputTokens:
		what, limit, asked = "output tokens per min (OTPM)", limits.OutputTokensPerMinute, cost.OutputTokens
	}
	if d.Oversize {
		return openai.Err(typ, codeRateLimit, fmt.Sprintf(
			"Request too large for model `%s` on %s: Limit %d, Requested %d. The input or output tokens must be reduced "+
				"in order to run successfully (the output counts max_completion_tokens or max_tokens, %d when unset).",
			model, what, limit, asked, DefaultOutputTokens))
	}
	return openai.Err(typ, codeRateLimit, fmt.Sprintf(
		"Rate limit reached for model `%s` on %s: Limit %d, Requested %d. Please try again in %s.",
		model, what, limit, asked, ratelimit.FormatReset(d.RetryAfter)))
}

// writeHeaders puts the x-ratelimit-* headers of an allowed request on
// its answer; nothing when the request is not limited.
func (ad *admission) writeHeaders(h http.Header) {
	if ad != nil {
		ratelimit.WriteHeaders(h, ad.d)
	}
}

// settleFailed settles a request that failed before an answer.
func (ad *admission) settleFailed(f *failure) {
	if ad == nil {
		return
	}
	c := ad.res.Cost()
	u := ratelimit.Usage{NotServed: true}
	switch f.spent {
	case spentInput:
		u = ratelimit.Usage{InputTokens: c.InputTokens}
	case spentAll:
		u = ratelimit.Usage{InputTokens: c.InputTokens, OutputTokens: c.OutputTokens}
	}
	ad.settle(u)
}

// settleServed settles a request a replica answered, with up.usage (an
// answer without usage that is not a success: the engine refused it, the
// request is kept and its tokens refunded).
func (ad *admission) settleServed(up *inflight) {
	if ad == nil {
		return
	}
	u := up.usage()
	if u == nil {
		ad.settle(ratelimit.Usage{})
		return
	}
	in, out := int64(min(u.PromptTokens, maxUsageTokens)), int64(min(u.CompletionTokens, maxUsageTokens))
	if ad.boundOut {
		out = min(out, ad.res.Cost().OutputTokens)
	}
	ad.settle(ratelimit.Usage{InputTokens: in, OutputTokens: out})
}

// settle ends the reservation. A backend failure is counted and logged by
// the limiter (the refund is lost: the tenant over-counted, never under).
func (ad *admission) settle(u ratelimit.Usage) {
	_ = ad.lim.Settle(context.Background(), ad.res, u)
}

// NewRateLimiter returns the rate limiter of a process's activators, to
// give each of them WithRateLimiter: its counters in Redis at redisAddr,
// shared with every activator that uses the same Redis, or, when
// redisAddr is empty, in this process's memory, shared by its activators
// only. mode decides when Redis fails or does not answer within
// ratelimit.DefaultTimeout. kvasir_ratelimit_backend_errors_total is
// registered in reg (once: give every activator the one limiter). close
// releases the Redis client. An unreachable Redis is not an error: it is
// logged, and the fail mode applies until it answers.
func NewRateLimiter(redisAddr string, mode ratelimit.FailMode, reg prometheus.Registerer, log *slog.Logger) (l *ratelimit.Limiter, close func() error, err error) {
	if log == nil {
		log = slog.Default()
	}
	if _, err := ratelimit.ParseFailMode(string(mode)); err != nil {
		return nil, nil, err
	}
	cfg := ratelimit.Config{FailMode: mode, Registerer: reg, Logger: logr.FromSlogHandler(log.Handler())}
	close = func() error { return nil }
	if redisAddr == "" {
		cfg.Backend = ratelimit.NewMemory(nil)
	} else {
		if _, _, err := net.SplitHostPort(redisAddr); err != nil {
			return nil, nil, fmt.Errorf("ratelimit redis address %q: %w", redisAddr, err)
		}
		client := redis.NewClient(ratelimit.RedisOptions(redisAddr, ratelimit.DefaultTimeout))
		cfg.Backend, close = ratelimit.NewRedis(client, ratelimit.RedisConfig{}), client.Close
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := client.Ping(ctx).Err(); err != nil {
			log.Warn("the rate limiter's Redis does not answer yet; the fail mode applies until it does",
				slog.String("redis", redisAddr), slog.String("failMode", string(mode)), slog.Any("error", err))
		}
		cancel()
	}
	if l, err = ratelimit.New(cfg); err != nil {
		_ = close()
		return nil, nil, err
	}
	return l, close, nil
}
