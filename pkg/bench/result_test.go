package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestPercentile(t *testing.T) {
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(i + 1) // 1..100
	}
	assert.InDelta(t, 50.5, Percentile(xs, 50), 1e-9)
	assert.InDelta(t, 90.1, Percentile(xs, 90), 1e-9)
	assert.InDelta(t, 99.01, Percentile(xs, 99), 1e-9)
	assert.Equal(t, 1.0, Percentile(xs, 0))
	assert.Equal(t, 100.0, Percentile(xs, 100))

	assert.Equal(t, 0.0, Percentile(nil, 50))
	assert.Equal(t, 7.0, Percentile([]float64{7}, 99))
	assert.InDelta(t, 2.5, Percentile([]float64{1, 2, 3, 4}, 50), 1e-9)
	assert.InDelta(t, 3.7, Percentile([]float64{1, 2, 3, 4}, 90), 1e-9) // rank 2.7
	assert.InDelta(t, 2.5, mean([]float64{1, 2, 3, 4}), 1e-9)
}

func TestSummarize(t *testing.T) {
	ms := time.Millisecond
	cfg := DefaultConfig()
	samples := []sample{
		{outcome: outcomeOK, streamed: true, ttft: 10 * ms, e2e: 40 * ms, itl: []time.Duration{10 * ms, 20 * ms}, chunks: 3,
			usage: true, prompt: 100, cached: 50, output: 3},
		{outcome: outcomeOK, streamed: true, ttft: 30 * ms, e2e: 60 * ms, itl: []time.Duration{30 * ms}, chunks: 2,
			usage: true, prompt: 300, cached: 50, output: 2},
		{outcome: outcomeOK, streamed: true, ttft: 20 * ms, e2e: 50 * ms, chunks: 1, prompt: 40, output: 1}, // no usage
		{outcome: outcomeError, errMsg: "HTTP 503: busy"},
		{outcome: outcomeError, errMsg: "HTTP 503: busy"},
		{outcome: outcomeError, errMsg: "timeout"},
		{outcome: outcomeCancelled, errMsg: "context canceled"},
	}
	r := summarize(cfg, samples, 2*time.Second)
	assert.Equal(t, 7, r.Requests)
	assert.Equal(t, 3, r.Completed)
	assert.Equal(t, 3, r.Errors)
	assert.Equal(t, 1, r.Cancelled)
	assert.Equal(t, 2.0, r.DurationS)
	assert.InDelta(t, 1.5, r.ThroughputRPS, 1e-9)
	assert.Equal(t, int64(6), r.OutputTokens)
	assert.InDelta(t, 3.0, r.OutputTokensPerS, 1e-9)
	assert.Equal(t, int64(440), r.InputTokens)
	assert.Equal(t, 2, r.UsageReported)
	assert.InDelta(t, 100.0/400, r.CacheHitRatio, 1e-9, "over requests that reported usage")
	assert.InDelta(t, 0.020, r.TTFTMeanS, 1e-9)
	assert.InDelta(t, 0.020, r.TTFTP50S, 1e-9)
	assert.InDelta(t, 0.030, r.TTFTMaxS, 1e-9)
	assert.InDelta(t, 0.050, r.E2EMeanS, 1e-9)
	assert.InDelta(t, 0.050, r.E2EP50S, 1e-9)
	assert.InDelta(t, 0.058, r.E2EP90S, 1e-9)
	assert.InDelta(t, 0.0598, r.E2EP99S, 1e-9)
	assert.InDelta(t, 0.020, r.ITLMeanS, 1e-9)
	assert.InDelta(t, (0.015+0.030)/2, r.TPOTMeanS, 1e-9) // (40-10)/2 and (60-30)/1
	assert.Equal(t, []ErrorExample{{"HTTP 503: busy", 2}, {"timeout", 1}}, r.ErrorExamples)

	empty := summarize(cfg, nil, 0)
	assert.Zero(t, empty.ThroughputRPS)
	assert.Zero(t, empty.TTFTP99S)
	assert.NotNil(t, empty.ErrorExamples)
}
