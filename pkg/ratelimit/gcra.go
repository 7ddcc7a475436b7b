package ratelimit

import (
	"math"
	"time"
)

// The GCRA of both backends (the Redis script mirrors it line for line):
// each rate limit is a theoretical arrival time (TAT) in microseconds. A
// limit of L per minute spends T = 60s/L per unit, and a bucket holds a
// full minute: a cost of n fits when max(TAT, now) + n*T - now <= 60s, and
// then TAT moves there. A refund moves TAT back by n*T, never before now.
// The bucket is full again (its reset) at TAT.
const (
	periodMicros = float64(Window / time.Microsecond)
	// slack absorbs float rounding: L debits of 60s/L each sum to 60s
	// within it.
	slack = periodMicros * 1e-9
	// concurrencyRetry is the Retry-After of a concurrency denial: a slot
	// frees when some request ends, which no clock tells.
	concurrencyRetry = time.Second
)

func micros(t time.Time) float64 { return float64(t.UnixMicro()) }

func microsDuration(us float64) time.Duration {
	return time.Duration(math.Ceil(us)) * time.Microsecond
}

// take checks every rate limit of limits against cost and, only when all
// admit it, debits them all in tats. inFlight and the concurrency limit are
// checked too (the caller takes the slot when allowed).
func take(tats *[numBuckets]float64, now float64, limits Limits, cost Cost, inFlight int64) Outcome {
	rates, amounts := limits.rates(), cost.amounts()
	o := Outcome{Allowed: true, Denied: LimitNone}
	var next [numBuckets]float64
	worst := -1.0
	for i, rate := range rates {
		if rate <= 0 {
			continue
		}
		per := periodMicros / float64(rate)
		next[i] = math.Max(tats[i], now) + float64(amounts[i])*per
		over := next[i] - now - periodMicros
		if over <= slack {
			continue
		}
		o.Allowed = false
		oversize := amounts[i] > rate
		if (oversize && !o.Oversize) || (oversize == o.Oversize && over > worst) {
			o.Denied, o.Oversize, worst = Limit(i), oversize, over
		}
	}
	if o.Allowed && limits.MaxConcurrentRequests > 0 && inFlight >= limits.MaxConcurrentRequests {
		o.Allowed, o.Denied = false, LimitConcurrency
	}
	switch {
	case o.Allowed:
		for i, rate := range rates {
			if rate > 0 {
				tats[i] = next[i]
			}
		}
	case o.Denied == LimitConcurrency:
		o.RetryAfter = concurrencyRetry
	case o.Oversize:
		o.RetryAfter = Window
	default:
		o.RetryAfter = microsDuration(worst)
	}
	for i, rate := range rates {
		if rate > 0 {
			o.Quotas[i] = quota(tats[i], now, rate)
		}
	}
	return o
}

// quota is a bucket's state at now.
func quota(tat, now float64, rate int64) Quota {
	used := math.Max(tat-now, 0)
	per := periodMicros / float64(rate)
	remaining := int64(math.Floor((periodMicros-used)/per + 1e-9))
	return Quota{Limit: rate, Remaining: min(max(remaining, 0), rate), Reset: microsDuration(used)}
}

// give credits refund to the rate limits of tats (a negative amount debits
// without a check).
func give(tats *[numBuckets]float64, now float64, limits Limits, refund Cost) {
	amounts := refund.amounts()
	for i, rate := range limits.rates() {
		if rate <= 0 || amounts[i] == 0 {
			continue
		}
		per := periodMicros / float64(rate)
		if amounts[i] > 0 {
			tats[i] = math.Max(now, tats[i]-float64(amounts[i])*per)
		} else {
			tats[i] = math.Max(tats[i], now) - float64(amounts[i])*per
		}
	}
}

// refundOf is what Settle returns of a reservation's cost given the usage.
func refundOf(cost Cost, u Usage) Cost {
	if u.NotServed {
		return cost
	}
	return Cost{InputTokens: cost.InputTokens - u.InputTokens, OutputTokens: cost.OutputTokens - u.OutputTokens}
}
