package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TenantResult is the summary of one tenant's requests in a multi-tenant
// run: every field of a Result (its duration is from the tenant's first
// arrival to its last completion, its settings are the tenant's) and the
// figures that tell tenants apart.
type TenantResult struct {
	Name       string `json:"name"`
	KeyFromEnv string `json:"key_from_env,omitempty"` // the variable's name, never the key
	*Result
	// TokensServed is input plus output tokens of the tenant's completed
	// requests (from usage when reported); TokensServedShare is its share
	// of all tenants' tokens served.
	TokensServed      int64   `json:"tokens_served"`
	TokensServedShare float64 `json:"tokens_served_share"`
	// BackloggedShare is the tenant's share of the tokens served while
	// every tenant of the run was backlogged (backlog.go says how it is
	// counted); nil (absent) when undefined: fewer than two tenants, never
	// all backlogged at once, or no token served then.
	BackloggedShare *float64 `json:"backlogged_share,omitempty"`
	// ErrorsByCode counts failed requests by HTTP status ("401", "429",
	// ...); "other" counts transport errors, timeouts, SSE error events and
	// truncated streams.
	ErrorsByCode map[string]int `json:"errors_by_code"`
	// RetryAfterCount is the answers (of any status) carrying Retry-After,
	// RetryAfterMaxS the largest of their values in seconds.
	RetryAfterCount int     `json:"retry_after_count"`
	RetryAfterMaxS  float64 `json:"retry_after_max_s"`
	// RateLimitHeaders counts the answers carrying each x-ratelimit-*
	// header (only headers seen are listed).
	RateLimitHeaders map[string]int `json:"ratelimit_headers"`
}

// ErrorCount returns the tenant's failed requests with HTTP status code.
func (t *TenantResult) ErrorCount(code int) int { return t.ErrorsByCode[strconv.Itoa(code)] }

// tenantRun is one tenant's part of a run.
type tenantRun struct {
	tenant  Tenant
	cfg     Config // resolved
	c       *client
	w       Workload
	samples []sample
	dur     time.Duration
	err     error
}

// runTenants runs cfg's tenants: each its warm-up (in turn), then all their
// measured requests at once, each tenant with its own client, key, arrival
// process and workload. cfg is valid.
func runTenants(ctx context.Context, cfg Config) (*Result, error) {
	runs := make([]*tenantRun, len(cfg.Tenants))
	for i, t := range cfg.Tenants {
		tc, err := cfg.TenantConfig(i)
		if err != nil {
			return nil, err
		}
		tc = tc.Resolved()
		tc.APIKey = tenantKey(t)
		c := newClient(tc)
		c.trackLimits = true
		defer c.close()
		if tc.Warmup > 0 {
			if err := warmup(ctx, c, tc); err != nil {
				return nil, fmt.Errorf("tenant %q: %w", t.Name, err)
			}
		}
		w, err := NewWorkload(tc)
		if err != nil {
			return nil, fmt.Errorf("tenant %q: %w", t.Name, err)
		}
		runs[i] = &tenantRun{tenant: t, cfg: tc, c: c, w: w}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Go(func() { r.samples, r.dur, r.err = dispatch(ctx, r.c, r.cfg, r.w) })
	}
	wg.Wait()
	res := summarizeTenants(cfg, runs, time.Since(start))
	for _, r := range runs {
		if r.err != nil {
			return res, fmt.Errorf("bench run: tenant %q: %w", r.tenant.Name, r.err)
		}
	}
	return res, nil
}

// summarizeTenants summarises all requests together (the run's settings are
// the sums of the tenants' rates, caps and requests) and each tenant alone.
func summarizeTenants(cfg Config, runs []*tenantRun, dur time.Duration) *Result {
	var all []sample
	var workloads []string
	rate, limit, n := 0.0, 0, 0
	unlimited := false
	for _, r := range runs {
		all = append(all, r.samples...)
		if !slices.Contains(workloads, r.cfg.Workload) {
			workloads = append(workloads, r.cfg.Workload)
		}
		rate += r.cfg.Rate
		limit += r.cfg.MaxConcurrency
		unlimited = unlimited || r.cfg.MaxConcurrency == 0
		n += r.w.Len()
	}
	res := summarize(cfg.Resolved(), all, dur)
	res.Workload = strings.Join(workloads, "+")
	res.Rate, res.NumPrompts = rate, n
	res.MaxConcurrency = limit
	if unlimited {
		res.MaxConcurrency = 0
	}
	var served int64
	res.Tenants = make([]TenantResult, len(runs))
	for i, r := range runs {
		tr := summarizeTenant(r)
		served += tr.TokensServed
		res.Tenants[i] = tr
	}
	if served > 0 {
		for i := range res.Tenants {
			res.Tenants[i].TokensServedShare = float64(res.Tenants[i].TokensServed) / float64(served)
		}
	}
	if len(runs) > 1 {
		shares, secs := backloggedShares(tenantRecords(runs))
		res.AllBackloggedS = &secs
		for i := range shares {
			res.Tenants[i].BackloggedShare = &shares[i]
		}
	}
	return res
}

// tenantRecords returns each tenant's requests as the backlogged share
// needs them, with times from the first request sent.
func tenantRecords(runs []*tenantRun) [][]servedRecord {
	var origin time.Time
	for _, r := range runs {
		for i := range r.samples {
			if t := r.samples[i].sent; !t.IsZero() && (origin.IsZero() || t.Before(origin)) {
				origin = t
			}
		}
	}
	out := make([][]servedRecord, len(runs))
	for k, r := range runs {
		out[k] = make([]servedRecord, 0, len(r.samples))
		for i := range r.samples {
			if rec, ok := recordOf(&r.samples[i], origin); ok {
				out[k] = append(out[k], rec)
			}
		}
	}
	return out
}

// summarizeTenant summarises one tenant's requests.
func summarizeTenant(r *tenantRun) TenantResult {
	res := summarize(r.cfg, r.samples, r.dur)
	res.NumPrompts = r.w.Len()
	tr := TenantResult{
		Name:             r.tenant.Name,
		KeyFromEnv:       r.tenant.KeyFromEnv,
		Result:           res,
		TokensServed:     res.InputTokens + res.OutputTokens,
		ErrorsByCode:     map[string]int{},
		RateLimitHeaders: map[string]int{},
	}
	for i := range r.samples {
		s := &r.samples[i]
		if s.outcome == outcomeError {
			code := "other"
			if s.status != 0 {
				code = strconv.Itoa(s.status)
			}
			tr.ErrorsByCode[code]++
		}
		if s.hasRetry {
			tr.RetryAfterCount++
			tr.RetryAfterMaxS = max(tr.RetryAfterMaxS, s.retryAfter.Seconds())
		}
		for b, name := range rateLimitHeaders {
			if s.limitHdrs&(1<<b) != 0 {
				tr.RateLimitHeaders[name]++
			}
		}
	}
	return tr
}
