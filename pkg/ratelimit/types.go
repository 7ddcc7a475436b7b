package ratelimit

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Window is the length of every rate (the limits are per minute).
const Window = time.Minute

// Limits is one rule of a tenant: any subset may be set, and zero means
// unlimited.
type Limits struct {
	// RequestsPerMinute bounds requests.
	RequestsPerMinute int64
	// TokensPerMinute bounds input plus output tokens.
	TokensPerMinute int64
	// InputTokensPerMinute bounds input (prompt) tokens.
	InputTokensPerMinute int64
	// OutputTokensPerMinute bounds output (generated) tokens.
	OutputTokensPerMinute int64
	// MaxConcurrentRequests bounds requests reserved and not yet settled.
	MaxConcurrentRequests int64
}

// Validate rejects negative limits.
func (l Limits) Validate() error {
	for i, v := range l.rates() {
		if v < 0 {
			return fmt.Errorf("ratelimit: %s limit %d is negative", Limit(i), v)
		}
	}
	if l.MaxConcurrentRequests < 0 {
		return fmt.Errorf("ratelimit: concurrency limit %d is negative", l.MaxConcurrentRequests)
	}
	return nil
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

func (l Limits) rates() [numBuckets]int64 {
	return [numBuckets]int64{l.RequestsPerMinute, l.TokensPerMinute, l.InputTokensPerMinute, l.OutputTokensPerMinute}
}

// Cost is what one request reserves (or, in a refund, returns; a negative
// amount then debits).
type Cost struct {
	// Requests is 1 for a request.
	Requests int64
	// InputTokens are the prompt's tokens as the activator counted them.
	InputTokens int64
	// OutputTokens are max_tokens, or a default when the request has none.
	OutputTokens int64
}

func (c Cost) amounts() [numBuckets]int64 {
	return [numBuckets]int64{c.Requests, c.InputTokens + c.OutputTokens, c.InputTokens, c.OutputTokens}
}

func (c Cost) validate() error {
	if c.Requests < 0 || c.InputTokens < 0 || c.OutputTokens < 0 {
		return fmt.Errorf("ratelimit: negative cost %+v", c)
	}
	return nil
}

// Usage is what a request really used, given to Settle.
type Usage struct {
	// InputTokens and OutputTokens are the queue-proxy's exact counts; for a
	// cancelled stream, what was generated until then.
	InputTokens, OutputTokens int64
	// NotServed is set when the request failed before reaching an engine:
	// everything is refunded, the request itself included.
	NotServed bool
}

// Limit names one limit of Limits.
type Limit int

// The limits, in the order of the buckets.
const (
	LimitRequests Limit = iota
	LimitTokens
	LimitInputTokens
	LimitOutputTokens
	LimitConcurrency
	// LimitNone is the Denied of an allowed request.
	LimitNone Limit = -1
)

// numBuckets counts the rate limits (the GCRA buckets), LimitRequests to
// LimitOutputTokens.
const numBuckets = 4

// String names the limit as error messages and metrics do.
func (l Limit) String() string {
	switch l {
	case LimitRequests:
		return "requests"
	case LimitTokens:
		return "tokens"
	case LimitInputTokens:
		return "input_tokens"
	case LimitOutputTokens:
		return "output_tokens"
	case LimitConcurrency:
		return "concurrency"
	case LimitNone:
		return "none"
	}
	return fmt.Sprintf("Limit(%d)", int(l))
}

// Quota is the state of one rate limit after a check.
type Quota struct {
	// Limit is the configured rate per minute; 0 when unset.
	Limit int64
	// Remaining is what could still be reserved now.
	Remaining int64
	// Reset is the time until the limit is back to its full budget.
	Reset time.Duration
}

// Outcome is a backend's answer to Take.
type Outcome struct {
	// Allowed reports that every limit admitted the cost and all were
	// debited.
	Allowed bool
	// Denied is the binding limit of a denial (the one to wait longest
	// for), LimitNone when allowed.
	Denied Limit
	// Oversize reports that the cost exceeds the Denied limit itself, so no
	// wait makes it fit.
	Oversize bool
	// RetryAfter is when the denied cost would fit.
	RetryAfter time.Duration
	// Quotas are the rate limits' states, indexed by Limit (requests to
	// output tokens); after the debit when allowed.
	Quotas [numBuckets]Quota
}

// State is what OpenAI's x-ratelimit-* headers tell.
type State struct {
	// Known is false when the backend could not be asked (fail open).
	Known bool
	// Requests is the requests-per-minute quota (Limit 0 when unset).
	Requests Quota
	// Tokens is the tightest token quota of the rule (tokens, input or
	// output: the one with the least remaining), Limit 0 when none is set.
	Tokens Quota
}

func stateOf(o Outcome) State {
	s := State{Known: true, Requests: o.Quotas[LimitRequests]}
	for _, l := range []Limit{LimitTokens, LimitInputTokens, LimitOutputTokens} {
		q := o.Quotas[l]
		if q.Limit > 0 && (s.Tokens.Limit == 0 || q.Remaining < s.Tokens.Remaining) {
			s.Tokens = q
		}
	}
	return s
}

func limitsState(l Limits) State {
	return State{
		Requests: Quota{Limit: l.RequestsPerMinute},
		Tokens:   Quota{Limit: firstSet(l.TokensPerMinute, l.InputTokensPerMinute, l.OutputTokensPerMinute)},
	}
}

func firstSet(vs ...int64) int64 {
	for _, v := range vs {
		if v > 0 {
			return v
		}
	}
	return 0
}

// Key names a tenant's limit rule: the namespace and name of the Tenant and
// the rule's model ("*" for every model).
type Key struct {
	Namespace, Tenant, Model string
}

// String is the key's canonical form, unique per Key: each part is escaped
// so that "/" inside a part cannot collide with the separator.
func (k Key) String() string {
	return escapeKey(k.Namespace) + "/" + escapeKey(k.Tenant) + "/" + escapeKey(k.Model)
}

func escapeKey(s string) string {
	if !strings.ContainsAny(s, "%/") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "%", "%25"), "/", "%2F")
}

// Decision is the answer to Reserve.
type Decision struct {
	// Allowed reports that the request may go on; then Reservation is set
	// and must be settled.
	Allowed bool
	// Reservation is what Settle takes back; nil when denied.
	Reservation *Reservation
	// Denied is the binding limit of a denial; LimitNone when allowed or
	// when the backend was unavailable.
	Denied Limit
	// Oversize reports that the request alone exceeds a limit.
	Oversize bool
	// Unavailable reports that the backend failed or timed out and the fail
	// mode decided: Allowed under FailOpen, denied under FailClosed.
	Unavailable bool
	// RetryAfter is how long to wait before retrying a denied request.
	RetryAfter time.Duration
	// State feeds the x-ratelimit-* headers.
	State State
}

// StatusCode is the HTTP status to answer with: 200 when allowed, 503 when
// the limiter was unavailable under FailClosed, 429 otherwise.
func (d Decision) StatusCode() int {
	switch {
	case d.Allowed:
		return http.StatusOK
	case d.Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusTooManyRequests
	}
}
