package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// maxErrorExamples is how many distinct error messages a Result keeps.
const maxErrorExamples = 5

// Result summarises a run. Latencies are in seconds; percentiles interpolate
// linearly between the closest ranks (numpy's default). Only completed
// requests enter the latency, token and cache figures.
type Result struct {
	Completed        int     `json:"completed"`
	Errors           int     `json:"errors"`
	DurationS        float64 `json:"duration_s"` // first arrival to last completion
	ThroughputRPS    float64 `json:"throughput_rps"`
	OutputTokensPerS float64 `json:"output_tokens_per_s"`
	TTFTMeanS        float64 `json:"ttft_mean_s"`
	TTFTP50S         float64 `json:"ttft_p50_s"`
	TTFTP90S         float64 `json:"ttft_p90_s"`
	TTFTP99S         float64 `json:"ttft_p99_s"`
	ITLMeanS         float64 `json:"itl_mean_s"`
	E2EMeanS         float64 `json:"e2e_mean_s"`
	E2EP99S          float64 `json:"e2e_p99_s"`
	CacheHitRatio    float64 `json:"cache_hit_ratio"`

	E2EP50S         float64 `json:"e2e_p50_s"`
	E2EP90S         float64 `json:"e2e_p90_s"`
	E2EMaxS         float64 `json:"e2e_max_s"`
	TTFTMaxS        float64 `json:"ttft_max_s"`
	ITLP50S         float64 `json:"itl_p50_s"`
	ITLP90S         float64 `json:"itl_p90_s"`
	ITLP99S         float64 `json:"itl_p99_s"`
	TPOTMeanS       float64 `json:"tpot_mean_s"` // per request: (e2e - ttft) / (output tokens - 1), averaged
	Requests        int     `json:"requests"`    // issued in the measured run
	Cancelled       int     `json:"cancelled"`   // cut short by the run's cancellation
	InputTokens     int64   `json:"input_tokens"`
	CachedTokens    int64   `json:"cached_tokens"`
	OutputTokens    int64   `json:"output_tokens"`
	InputTokensPerS float64 `json:"input_tokens_per_s"`
	UsageReported   int     `json:"usage_reported"` // completed requests whose server reported usage
	TTFTMeasured    bool    `json:"ttft_measured"`  // false with --stream=false

	ErrorExamples []ErrorExample `json:"error_examples"`

	// E2E is every completed request's end-to-end latency in seconds,
	// sorted, for pooling the requests of several runs (not serialized).
	E2E []float64 `json:"-"`

	// The run's settings, for comparing results.
	Target         string  `json:"target"`
	Model          string  `json:"model"`
	Endpoint       string  `json:"endpoint"`
	Workload       string  `json:"workload"`
	Rate           float64 `json:"rate"`
	Arrival        string  `json:"arrival"`
	MaxConcurrency int     `json:"max_concurrency"`
	NumPrompts     int     `json:"num_prompts"`
	Stream         bool    `json:"stream"`
	Seed           int64   `json:"seed"`

	// Tenants, in a multi-tenant run, summarise each tenant alone; the
	// fields above are then all tenants' requests together, with the sums
	// of their rates, caps and requests as settings.
	Tenants []TenantResult `json:"tenants,omitempty"`
	// AllBackloggedS, in a run of two tenants or more, is how long every
	// tenant was backlogged at once, in seconds (see TenantResult's
	// BackloggedShare).
	AllBackloggedS *float64 `json:"all_backlogged_s,omitempty"`
}

// ErrorExample is one distinct error message and how many requests failed with it.
type ErrorExample struct {
	Message string `json:"message"`
	Count   int    `json:"count"`
}

// summarize computes the Result of samples measured over dur.
func summarize(cfg Config, samples []sample, dur time.Duration) *Result {
	r := &Result{
		Requests:       len(samples),
		DurationS:      dur.Seconds(),
		TTFTMeasured:   cfg.Stream,
		ErrorExamples:  []ErrorExample{},
		Target:         cfg.Target,
		Model:          cfg.Model,
		Endpoint:       cfg.Endpoint,
		Workload:       cfg.Workload,
		Rate:           cfg.Rate,
		Arrival:        cfg.Arrival,
		MaxConcurrency: cfg.MaxConcurrency,
		NumPrompts:     cfg.NumPrompts,
		Stream:         cfg.Stream,
		Seed:           cfg.Seed,
	}
	var ttft, e2e, itl, tpot []float64
	var promptWithUsage, cachedWithUsage int64
	for i := range samples {
		s := &samples[i]
		switch s.outcome {
		case outcomeCancelled:
			r.Cancelled++
			continue
		case outcomeError:
			r.Errors++
			r.noteError(s.errMsg)
			continue
		}
		r.Completed++
		e2e = append(e2e, s.e2e.Seconds())
		if s.streamed && s.chunks > 0 {
			ttft = append(ttft, s.ttft.Seconds())
			for _, g := range s.itl {
				itl = append(itl, g.Seconds())
			}
			if s.output > 1 {
				tpot = append(tpot, (s.e2e-s.ttft).Seconds()/float64(s.output-1))
			}
		}
		r.InputTokens += int64(s.prompt)
		r.OutputTokens += int64(s.output)
		if s.usage {
			r.UsageReported++
			promptWithUsage += int64(s.prompt)
			cachedWithUsage += int64(s.cached)
		}
	}
	r.CachedTokens = cachedWithUsage
	if promptWithUsage > 0 {
		r.CacheHitRatio = float64(cachedWithUsage) / float64(promptWithUsage)
	}
	if secs := dur.Seconds(); secs > 0 {
		r.ThroughputRPS = float64(r.Completed) / secs
		r.OutputTokensPerS = float64(r.OutputTokens) / secs
		r.InputTokensPerS = float64(r.InputTokens) / secs
	}
	slices.Sort(ttft)
	slices.Sort(e2e)
	slices.Sort(itl)
	r.TTFTMeanS, r.TTFTP50S, r.TTFTP90S, r.TTFTP99S = mean(ttft), Percentile(ttft, 50), Percentile(ttft, 90), Percentile(ttft, 99)
	r.TTFTMaxS = Percentile(ttft, 100)
	r.E2EMeanS, r.E2EP50S, r.E2EP90S, r.E2EP99S = mean(e2e), Percentile(e2e, 50), Percentile(e2e, 90), Percentile(e2e, 99)
	r.E2EMaxS = Percentile(e2e, 100)
	r.E2E = e2e
	r.ITLMeanS, r.ITLP50S, r.ITLP90S, r.ITLP99S = mean(itl), Percentile(itl, 50), Percentile(itl, 90), Percentile(itl, 99)
	r.TPOTMeanS = mean(tpot)
	return r
}

func (r *Result) noteError(msg string) {
	for i := range r.ErrorExamples {
		if r.ErrorExamples[i].Message == msg {
			r.ErrorExamples[i].Count++
			return
		}
	}
	if len(r.ErrorExamples) < maxErrorExamples {
		r.ErrorExamples = append(r.ErrorExamples, ErrorExample{Message: msg, Count: 1})
	}
}

// Percentile returns the p-th percentile (0..100) of sorted samples,
// interpolating linearly between the closest ranks: rank p/100*(n-1), as
// numpy.percentile does by default. It returns 0 for no samples.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := p / 100 * float64(n-1)
	lo := int(math.Floor(rank))
	if lo >= n-1 {
		return sorted[n-1]
	}
	if lo < 0 {
		return sorted[0]
	}
	frac := rank - float64(lo)
	return sorted[lo] + (sorted[lo+1]-sorted[lo])*frac
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// WriteJSON writes r as one indented JSON object.
func (r *Result) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// WriteTable writes r for humans.
func (r *Result) WriteTable(w io.Writer) {
	ms := func(s float64) string { return fmt.Sprintf("%.2f", s*1000) }
	line := func(name, value string) { fmt.Fprintf(w, "%-36s %s\n", name, value) }
	section := func(title string) { fmt.Fprintf(w, "%s\n", center(title, '-')) }

	fmt.Fprintf(w, "%s\n", center(" Kvasir Benchmark Result ", '='))
	line("Target:", r.Target)
	line("Model:", r.Model)
	line("Endpoint / workload:", r.Endpoint+" / "+r.Workload)
	if r.Rate > 0 {
		line("Request rate (req/s):", fmt.Sprintf("%g (%s)", r.Rate, r.Arrival))
	} else {
		line("Request rate (req/s):", "closed loop")
	}
	if r.MaxConcurrency > 0 {
		line("Max concurrency:", fmt.Sprint(r.MaxConcurrency))
	} else {
		line("Max concurrency:", "unlimited")
	}
	line("Requests issued:", fmt.Sprint(r.Requests))
	line("Successful requests:", fmt.Sprint(r.Completed))
	line("Failed requests:", fmt.Sprint(r.Errors))
	if r.Cancelled > 0 {
		line("Cancelled requests:", fmt.Sprint(r.Cancelled))
	}
	line("Benchmark duration (s):", fmt.Sprintf("%.2f", r.DurationS))
	line("Total input tokens:", fmt.Sprint(r.InputTokens))
	line("Total output tokens:", fmt.Sprint(r.OutputTokens))
	line("Request throughput (req/s):", fmt.Sprintf("%.2f", r.ThroughputRPS))
	line("Input token throughput (tok/s):", fmt.Sprintf("%.2f", r.InputTokensPerS))
	line("Output token throughput (tok/s):", fmt.Sprintf("%.2f", r.OutputTokensPerS))
	if r.UsageReported > 0 {
		line("Cache hit ratio:", fmt.Sprintf("%.4f", r.CacheHitRatio))
	} else {
		line("Cache hit ratio:", "unknown (no usage reported)")
	}
	section(" End-to-End Latency ")
	line("Mean E2E latency (ms):", ms(r.E2EMeanS))
	line("P50 E2E latency (ms):", ms(r.E2EP50S))
	line("P90 E2E latency (ms):", ms(r.E2EP90S))
	line("P99 E2E latency (ms):", ms(r.E2EP99S))
	line("Max E2E latency (ms):", ms(r.E2EMaxS))
	if r.TTFTMeasured {
		section(" Time to First Token ")
		line("Mean TTFT (ms):", ms(r.TTFTMeanS))
		line("P50 TTFT (ms):", ms(r.TTFTP50S))
		line("P90 TTFT (ms):", ms(r.TTFTP90S))
		line("P99 TTFT (ms):", ms(r.TTFTP99S))
		line("Max TTFT (ms):", ms(r.TTFTMaxS))
		section(" Inter-Token Latency ")
		line("Mean ITL (ms):", ms(r.ITLMeanS))
		line("P50 ITL (ms):", ms(r.ITLP50S))
		line("P90 ITL (ms):", ms(r.ITLP90S))
		line("P99 ITL (ms):", ms(r.ITLP99S))
		line("Mean TPOT (ms):", ms(r.TPOTMeanS))
	} else {
		section(" Time to First Token ")
		line("TTFT / ITL:", "not measured (--stream=false)")
	}
	if len(r.ErrorExamples) > 0 {
		section(" Errors ")
		for _, e := range r.ErrorExamples {
			fmt.Fprintf(w, "%6d × %s\n", e.Count, e.Message)
		}
	}
	if len(r.Tenants) > 0 {
		section(" Tenants (latencies in ms) ")
		writeTenantTable(w, r.Tenants, r.AllBackloggedS)
	}
	fmt.Fprintf(w, "%s\n", center("", '='))
}

func center(title string, fill byte) string {
	const width = 50
	pad := max(width-len(title), 0)
	left := pad / 2
	b := make([]byte, 0, width)
	for range left {
		b = append(b, fill)
	}
	b = append(b, title...)
	for range pad - left {
		b = append(b, fill)
	}
	return string(b)
}

// writeTenantTable writes one row per tenant (latencies in ms), how long
// every tenant was backlogged (allBacklogged, when known), then, for the
// tenants that saw any, the rate-limit answers and headers.
func writeTenantTable(w io.Writer, tenants []TenantResult, allBacklogged *float64) {
	ms := func(s float64) string { return fmt.Sprintf("%.2f", s*1000) }
	rows := [][]string{{"tenant", "done", "errors", "401", "403", "429", "503", "req/s", "out tok/s",
		"tok served", "share", "backlogged", "TTFT p50", "p90", "p99", "E2E p50", "p90", "p99"}}
	for i := range tenants {
		t := &tenants[i]
		backlogged := "-"
		if t.BackloggedShare != nil {
			backlogged = fmt.Sprintf("%.1f%%", *t.BackloggedShare*100)
		}
		rows = append(rows, []string{t.Name, fmt.Sprint(t.Completed), fmt.Sprint(t.Errors),
			fmt.Sprint(t.ErrorCount(401)), fmt.Sprint(t.ErrorCount(403)), fmt.Sprint(t.ErrorCount(429)), fmt.Sprint(t.ErrorCount(503)),
			fmt.Sprintf("%.2f", t.ThroughputRPS), fmt.Sprintf("%.1f", t.OutputTokensPerS), fmt.Sprint(t.TokensServed),
			fmt.Sprintf("%.1f%%", t.TokensServedShare*100), backlogged, ms(t.TTFTP50S), ms(t.TTFTP90S), ms(t.TTFTP99S),
			ms(t.E2EP50S), ms(t.E2EP90S), ms(t.E2EP99S)})
	}
	writeColumns(w, rows)
	if allBacklogged != nil {
		fmt.Fprintf(w, "every tenant backlogged for %.1f s; backlogged: share of the tokens served then\n", *allBacklogged)
	}
	for i := range tenants {
		t := &tenants[i]
		headers := 0
		for _, n := range t.RateLimitHeaders {
			headers = max(headers, n)
		}
		if t.ErrorCount(429) == 0 && t.RetryAfterCount == 0 && headers == 0 {
			continue
		}
		fmt.Fprintf(w, "%s: %d × 429, Retry-After on %d answers (max %.1f s), x-ratelimit-* headers on %d answers\n",
			t.Name, t.ErrorCount(429), t.RetryAfterCount, t.RetryAfterMaxS, headers)
	}
}
