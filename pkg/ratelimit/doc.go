// Package ratelimit is the tenants' rate limiter of issue 15: requests,
// tokens (input plus output), input tokens and output tokens per minute, and
// concurrent requests, for a key that names a tenant's limit rule.
//
// # Use
//
// The activator calls Reserve before it forwards a request, with the rule's
// Limits and the request's Cost (1 request, the prompt's tokens, max_tokens
// or a default for output). The Decision either allows the request, with a
// Reservation, or denies it with the binding limit and a Retry-After; in
// both cases WriteHeaders puts OpenAI's x-ratelimit-* headers on the answer.
// When the request ends the activator calls Settle with the Usage the
// queue-proxy measured (a cancelled stream: what was generated; a request
// that failed before an engine: Usage{NotServed: true}, which refunds
// everything). Settle gives the difference back to the buckets (or debits
// an overuse) and frees the concurrency slot.
//
// # Algorithm
//
// Each rate limit is a GCRA bucket (a token bucket kept as a theoretical
// arrival time): a limit of L per minute holds L units and refills one every
// minute/L; a cost of n fits when the bucket holds n, and debits n. A refund
// moves the arrival time back, never before now, so no refund makes a bucket
// fuller than full. A request's limits are checked and debited together,
// all or nothing: a denied request debits nothing. The Retry-After of a
// denial is exact: the time until the binding bucket holds the cost. A cost
// above the limit itself never fits (Decision.Oversize; OpenAI answers such
// a request 429 "request too large"). A concurrency denial says Retry-After
// 1s: a slot frees when some request ends, which no clock tells.
//
// # Backends
//
// Memory holds the buckets of one activator (a mutex per shard of keys; a
// few hundred nanoseconds per call). Redis holds them for several: one Lua
// script per call (take.lua, give.lua) does every limit of the request
// atomically on the server's clock, shared by every activator. Each bucket's
// key expires when the bucket would be full, so idle tenants vanish; a
// concurrency slot is a member of a sorted set scored by the end of its
// lease (RedisConfig.Lease), so the slots of a crashed activator lapse.
//
// # Redis failures
//
// Every backend call is bounded by Config.Timeout (100ms by default; use
// RedisOptions for a client that honours it on dials, reads, writes and the
// pool wait, without retries). On an error or timeout the fail mode decides
// at once, and kvasir_ratelimit_backend_errors_total{mode,op} counts it;
// failures are logged at most once per Config.LogEvery, without keys.
//
//   - FailOpen (the default) allows the request unmetered: an outage of the
//     limiter's store does not become an outage of the service. Its Settle
//     does nothing.
//   - FailClosed denies it with 503 Service Unavailable and Retry-After 1s
//     (Decision.Unavailable, StatusCode), not 429: 429 would tell the client
//     it exceeded its quota, which is false and misleads both its backoff
//     and whoever reads the metrics of throttled tenants, whereas 503 says
//     the service cannot decide right now. OpenAI's SDKs retry both.
//
// A call that timed out may still have run on the server: the tenant is then
// over-counted (never under-counted), and its slot lapses with the lease. A
// failed Settle loses its refund the same way.
package ratelimit
