package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
)

// Backend holds the buckets. Both methods are atomic per call: every limit
// of the request is checked and debited together, or none is.
type Backend interface {
	// Take checks every limit of limits against cost and, only when all
	// admit it, debits them all and takes a concurrency slot named slot
	// (when limits.MaxConcurrentRequests is set).
	Take(ctx context.Context, key string, limits Limits, cost Cost, slot string) (Outcome, error)
	// Return credits refund to the rate limits (a negative amount debits,
	// without a check; nothing moves a bucket past full) and frees the
	// slot when limits.MaxConcurrentRequests is set.
	Return(ctx context.Context, key string, limits Limits, refund Cost, slot string) error
}

// FailMode is what Reserve decides when the backend fails or times out.
type FailMode string

const (
	// FailOpen allows the request, unmetered.
	FailOpen FailMode = "open"
	// FailClosed denies it with 503 (see the package doc).
	FailClosed FailMode = "closed"
)

// ParseFailMode parses "open" or "closed" (a flag's value).
func ParseFailMode(s string) (FailMode, error) {
	switch FailMode(s) {
	case FailOpen, FailClosed:
		return FailMode(s), nil
	}
	return "", fmt.Errorf("ratelimit: fail mode %q: want open or closed", s)
}

// DefaultTimeout bounds each backend call when Config.Timeout is zero.
const DefaultTimeout = 100 * time.Millisecond

// unavailableRetry is the Retry-After of a fail-closed denial.
const unavailableRetry = time.Second

// Config configures a Limiter.
type Config struct {
	// Backend holds the buckets: NewMemory for one activator, NewRedis for
	// several.
	Backend Backend
	// FailMode applies when a backend call fails or times out; default
	// FailOpen.
	FailMode FailMode
	// Timeout bounds every backend call; default DefaultTimeout.
	Timeout time.Duration
	// Registerer takes kvasir_ratelimit_backend_errors_total; nil registers
	// nothing.
	Registerer prometheus.Registerer
	// Logger logs backend failures, at most once per LogEvery; never keys.
	Logger logr.Logger
	// LogEvery spaces failure logs; default 10s.
	LogEvery time.Duration
}

// Limiter reserves a request's cost before it is forwarded and settles it
// with the exact usage when it ends. It is safe for concurrent use.
type Limiter struct {
	backend  Backend
	local    bool // the backend is Memory: no I/O, no timeout needed
	failMode FailMode
	timeout  time.Duration
	errors   *prometheus.CounterVec
	log      *rateLog
	slotBase string
	slotSeq  atomic.Uint64
}

// New returns a Limiter over cfg.Backend.
func New(cfg Config) (*Limiter, error) {
	if cfg.Backend == nil {
		return nil, errors.New("ratelimit: no backend")
	}
	mode := cfg.FailMode
	if mode == "" {
		mode = FailOpen
	}
	if _, err := ParseFailMode(string(mode)); err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	errs, err := registerErrors(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	_, local := cfg.Backend.(*Memory)
	return &Limiter{
		backend:  cfg.Backend,
		local:    local,
		failMode: mode,
		timeout:  timeout,
		errors:   errs,
		log:      newRateLog(cfg.Logger, cfg.LogEvery),
		slotBase: hex.EncodeToString(b[:]) + ":",
	}, nil
}

func registerErrors(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvasir_ratelimit_backend_errors_total",
		Help: "Rate limiter backend calls that failed or timed out, by fail mode and operation (reserve: the fail mode decided; settle: the refund was lost).",
	}, []string{"mode", "op"})
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("ratelimit: register metrics: %w", err)
	}
	return c, nil
}

// Reservation is what an allowed request holds until Settle.
type Reservation struct {
	key     string
	limits  Limits
	cost    Cost
	slot    string
	metered bool // false when allowed by FailOpen: nothing to give back
	settled atomic.Bool
}

// Cost is what the reservation debited.
func (r *Reservation) Cost() Cost { return r.cost }

// Reserve checks and debits cost against every limit of limits for key, all
// or nothing. A backend failure or timeout is not an error: the fail mode
// decides (Decision.Unavailable). The error is for invalid arguments or a
// ctx already done.
func (l *Limiter) Reserve(ctx context.Context, key Key, limits Limits, cost Cost) (Decision, error) {
	if err := limits.Validate(); err != nil {
		return Decision{}, err
	}
	if err := cost.validate(); err != nil {
		return Decision{}, err
	}
	if err := ctx.Err(); err != nil {
		return Decision{}, fmt.Errorf("ratelimit: reserve: %w", err)
	}
	r := &Reservation{key: key.String(), limits: limits, cost: cost, metered: true}
	if limits.MaxConcurrentRequests > 0 {
		r.slot = l.slotBase + strconv.FormatUint(l.slotSeq.Add(1), 36)
	}
	o, err := l.take(ctx, r, limits, cost)
	if err != nil {
		if ctx.Err() != nil { // the caller gave up, not the backend
			return Decision{}, fmt.Errorf("ratelimit: reserve: %w", ctx.Err())
		}
		return l.unavailable(r, err), nil
	}
	d := Decision{Allowed: o.Allowed, Denied: o.Denied, Oversize: o.Oversize, RetryAfter: o.RetryAfter, State: stateOf(o)}
	if o.Allowed {
		d.Reservation = r
	}
	return d, nil
}

func (l *Limiter) unavailable(r *Reservation, err error) Decision {
	l.errors.WithLabelValues(string(l.failMode), "reserve").Inc()
	l.log.error(err, "rate limit backend unavailable; fail mode applies", "failMode", string(l.failMode))
	d := Decision{Unavailable: true, Denied: LimitNone, State: limitsState(r.limits)}
	if l.failMode == FailOpen {
		r.metered = false
		d.Allowed, d.Reservation = true, r
		return d
	}
	d.RetryAfter = unavailableRetry
	return d
}

// Settle ends a reservation with what the request really used: the
// difference to the cost reserved goes back to the buckets (or, for an
// overuse, is debited), and the concurrency slot is freed. A reservation is
// settled once; later calls do nothing. A backend failure is counted and
// logged, and returned: the refund is lost (the tenant is over-counted,
// never under), and a Redis slot lapses with its lease.
func (l *Limiter) Settle(ctx context.Context, r *Reservation, u Usage) error {
	if r == nil || !r.settled.CompareAndSwap(false, true) || !r.metered {
		return nil
	}
	refund := refundOf(r.cost, u)
	if refund == (Cost{}) && r.limits.MaxConcurrentRequests <= 0 {
		return nil
	}
	if err := l.give(ctx, r, refund); err != nil {
		l.errors.WithLabelValues(string(l.failMode), "settle").Inc()
		l.log.error(err, "rate limit backend unavailable; settle lost")
		return fmt.Errorf("ratelimit: settle: %w", err)
	}
	return nil
}

// take asks the backend within the timeout. The memory backend does no I/O
// and cannot hang, so it goes without the timer.
func (l *Limiter) take(ctx context.Context, r *Reservation, limits Limits, cost Cost) (Outcome, error) {
	if l.local {
		return l.backend.Take(ctx, r.key, limits, cost, r.slot)
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	return l.backend.Take(ctx, r.key, limits, cost, r.slot)
}

// give returns refund within the timeout. Settle runs when the request
// ends, often as its context is cancelled: the refund must still reach the
// backend.
func (l *Limiter) give(ctx context.Context, r *Reservation, refund Cost) error {
	if l.local {
		return l.backend.Return(ctx, r.key, r.limits, refund, r.slot)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.timeout)
	defer cancel()
	return l.backend.Return(ctx, r.key, r.limits, refund, r.slot)
}

// rateLog logs at most once per interval and counts what it held back.
type rateLog struct {
	log        logr.Logger
	every      time.Duration
	next       atomic.Int64 // unix nanos of the next allowed log
	suppressed atomic.Int64
}

func newRateLog(log logr.Logger, every time.Duration) *rateLog {
	if every <= 0 {
		every = 10 * time.Second
	}
	return &rateLog{log: log, every: every}
}

func (r *rateLog) error(err error, msg string, kv ...any) {
	now := time.Now().UnixNano()
	next := r.next.Load()
	if now < next || !r.next.CompareAndSwap(next, now+int64(r.every)) {
		r.suppressed.Add(1)
		return
	}
	kv = append(kv, "suppressed", r.suppressed.Swap(0))
	r.log.Error(err, msg, kv...)
}
