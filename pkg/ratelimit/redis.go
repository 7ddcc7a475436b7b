package ratelimit

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed now.lua
	nowLua string
	//go:embed take.lua
	takeLua    string
	takeScript = redis.NewScript(nowLua + takeLua)
	//go:embed give.lua
	giveLua    string
	giveScript = redis.NewScript(nowLua + giveLua)
)

// DefaultLease is how long a Redis concurrency slot outlives its Reserve
// when it is never settled (an activator crashed).
const DefaultLease = 15 * time.Minute

// DefaultPrefix starts every Redis key of the limiter.
const DefaultPrefix = "kvasir:rl:"

// RedisConfig configures a Redis backend.
type RedisConfig struct {
	// Prefix starts every key; default DefaultPrefix.
	Prefix string
	// Lease bounds a concurrency slot's life; default DefaultLease. A
	// request running longer no longer holds its slot.
	Lease time.Duration
	// Now is the clock; nil (the default) uses the Redis server's, which
	// every activator shares. Tests set it.
	Now func() time.Time
}

// Redis is the Backend shared by several activators: one Lua script per
// call checks and debits every limit of the request atomically. Each
// bucket's key expires when the bucket is full again, so an idle tenant
// leaves nothing behind; a concurrency slot is a member of a sorted set
// scored by its lease's end, so a crashed activator's slots lapse.
type Redis struct {
	client redis.Scripter
	cfg    RedisConfig
}

var _ Backend = (*Redis)(nil)

// NewRedis returns a backend over client (see RedisOptions for one whose
// calls a context deadline bounds).
func NewRedis(client redis.Scripter, cfg RedisConfig) *Redis {
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	return &Redis{client: client, cfg: cfg}
}

// RedisOptions returns client options for addr whose every call returns
// within timeout: context deadlines bound the socket, dials, reads, writes
// and the pool wait are bounded too, and there are no retries of commands or
// dials (the fail mode decides at once).
func RedisOptions(addr string, timeout time.Duration) *redis.Options {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &redis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		DialTimeout:           timeout,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		MaxRetries:            -1,
		DialerRetries:         1,
		DisableIdentity:       true,
	}
}

func (r *Redis) keys(key string) []string {
	// The hash tag keeps a key's five entries on one Redis Cluster slot.
	tag := r.cfg.Prefix + "{" + strings.NewReplacer("{", "%7B", "}", "%7D").Replace(key) + "}:"
	return []string{tag + "r", tag + "t", tag + "i", tag + "o", tag + "c"}
}

func (r *Redis) args(limits Limits, amounts Cost, slot string) []any {
	now := ""
	if r.cfg.Now != nil {
		now = fmt.Sprint(r.cfg.Now().UnixMicro())
	}
	a := amounts.amounts()
	return []any{now,
		limits.RequestsPerMinute, limits.TokensPerMinute, limits.InputTokensPerMinute, limits.OutputTokensPerMinute,
		limits.MaxConcurrentRequests,
		a[0], a[1], a[2], a[3],
		slot, r.cfg.Lease.Microseconds()}
}

// Take implements Backend.
func (r *Redis) Take(ctx context.Context, key string, limits Limits, cost Cost, slot string) (Outcome, error) {
	vals, err := takeScript.Run(ctx, r.client, r.keys(key), r.args(limits, cost, slot)...).Int64Slice()
	if err != nil {
		return Outcome{}, fmt.Errorf("ratelimit: redis take: %w", err)
	}
	if len(vals) != 4+2*numBuckets {
		return Outcome{}, errors.New("ratelimit: redis take: malformed reply")
	}
	o := Outcome{Allowed: vals[0] == 1, Denied: Limit(vals[1]), Oversize: vals[2] == 1}
	switch {
	case o.Allowed:
		o.Denied = LimitNone
	case o.Denied == LimitConcurrency:
		o.RetryAfter = concurrencyRetry
	case o.Oversize:
		o.RetryAfter = Window
	default:
		o.RetryAfter = time.Duration(vals[3]) * time.Microsecond
	}
	for i, rate := range limits.rates() {
		if rate > 0 {
			o.Quotas[i] = Quota{Limit: rate, Remaining: vals[4+2*i], Reset: time.Duration(vals[5+2*i]) * time.Microsecond}
		}
	}
	return o, nil
}

// Return implements Backend.
func (r *Redis) Return(ctx context.Context, key string, limits Limits, refund Cost, slot string) error {
	if err := giveScript.Run(ctx, r.client, r.keys(key), r.args(limits, refund, slot)...).Err(); err != nil {
		return fmt.Errorf("ratelimit: redis give: %w", err)
	}
	return nil
}
