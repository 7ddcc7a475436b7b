package ratelimit

import (
	"net/http"
	"strconv"
	"time"
)

// The headers WriteHeaders sets, as OpenAI names them.
const (
	HeaderLimitRequests     = "x-ratelimit-limit-requests"
	HeaderLimitTokens       = "x-ratelimit-limit-tokens"
	HeaderRemainingRequests = "x-ratelimit-remaining-requests"
	HeaderRemainingTokens   = "x-ratelimit-remaining-tokens"
	HeaderResetRequests     = "x-ratelimit-reset-requests"
	HeaderResetTokens       = "x-ratelimit-reset-tokens"
	HeaderRetryAfter        = "Retry-After"
	// HeaderRetryAfterMs is the millisecond Retry-After that OpenAI's SDKs
	// prefer to Retry-After's whole seconds.
	HeaderRetryAfterMs = "retry-after-ms"
)

// WriteHeaders sets OpenAI's x-ratelimit-* headers for the limits the rule
// has (requests and the tightest token limit), and Retry-After with
// retry-after-ms on a denial. Resets are durations as OpenAI writes them:
// "1s", "6m0s", "120ms". When the backend was unavailable only the limits
// are known, so only they are written.
func WriteHeaders(h http.Header, d Decision) {
	writeQuota(h, d.State.Requests, d.State.Known, HeaderLimitRequests, HeaderRemainingRequests, HeaderResetRequests)
	writeQuota(h, d.State.Tokens, d.State.Known, HeaderLimitTokens, HeaderRemainingTokens, HeaderResetTokens)
	if !d.Allowed {
		secs := int64((d.RetryAfter + time.Second - 1) / time.Second)
		h.Set(HeaderRetryAfter, strconv.FormatInt(max(secs, 1), 10))
		ms := int64((d.RetryAfter + time.Millisecond - 1) / time.Millisecond)
		h.Set(HeaderRetryAfterMs, strconv.FormatInt(max(ms, 1), 10))
	}
}

func writeQuota(h http.Header, q Quota, known bool, limit, remaining, reset string) {
	if q.Limit <= 0 {
		return
	}
	h.Set(limit, strconv.FormatInt(q.Limit, 10))
	if !known {
		return
	}
	h.Set(remaining, strconv.FormatInt(q.Remaining, 10))
	h.Set(reset, FormatReset(q.Reset))
}

// FormatReset writes a reset duration as OpenAI does: Go's duration syntax
// rounded up to the millisecond ("0s", "120ms", "1s", "6m0s", "17.064s").
func FormatReset(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	return ((d + time.Millisecond - 1) / time.Millisecond * time.Millisecond).String()
}
