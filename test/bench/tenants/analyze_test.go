package main

import (
	"io"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// allowed is a 2xx answer of tokens, sent at s and answered 50 ms later.
func allowed(s float64, tokens int64) record {
	return record{sent: secs(s), answered: secs(s + 0.05), status: 200, tokens: tokens, usage: true, metered: true}
}

func refused(s float64, status int) record {
	return record{sent: secs(s), answered: secs(s + 0.001), status: status}
}

// steady is the limiter's steady state at 100 tokens/s (6000 a minute):
// a 429 at 0, then one request of 100 tokens allowed each second up to
// last, with two refused between each.
func steady(last int) []record {
	recs := []record{refused(0, 429)}
	for i := 1; i <= last; i++ {
		at := float64(i)
		recs = append(recs, allowed(at, 100), refused(at+0.33, 429), refused(at+0.66, 429))
	}
	return recs
}

func TestFailModeSeen(t *testing.T) {
	const limit, cost = 6000, 100.0
	kill := secs(10.5)
	cases := []struct {
		name   string
		mode   string
		recs   []record
		after  float64 // < 0: not seen
		before int
	}{
		{"closed: the first 503 after the kill", failClosed,
			append(steady(10), refused(10.6, 503), refused(10.55, 503), refused(10.7, 503)), 0.051, 0},
		{"closed: a 503 before the kill is not the fail mode", failClosed,
			append(steady(10), refused(10.2, 503)), -1, 0},
		{"closed: no 503 after the kill", failClosed, append(steady(10), allowed(10.6, 100)), -1, 0},
		{"open: the steady state is within the limit", failOpen, steady(10), -1, 0},
		{"open: allowed past the limit after the kill", failOpen,
			// tat 70 at 10 s; 10.6 and 10.7 fit within the slack of two
			// requests, 10.8 does not.
			append(steady(10), allowed(10.6, 100), allowed(10.7, 100), allowed(10.8, 100), allowed(10.9, 100)), 0.35, 0},
		{"open: answers just after the kill that fit are not the fail mode", failOpen,
			append(steady(10), allowed(11, 100), allowed(12, 100)), -1, 0},
		{"open: beyond the limit before the kill is counted apart", failOpen,
			append(steady(5), allowed(5.1, 100), allowed(5.2, 100), allowed(5.3, 100), allowed(5.4, 100)), -1, 2},
		{"open: without a 429 the limit is unknown", failOpen,
			[]record{allowed(1, 100), allowed(11, 100), allowed(11.1, 100), allowed(11.2, 100), allowed(11.3, 100)}, -1, 0},
		{"open: answers before the first 429 are the burst", failOpen,
			append([]record{allowed(-5, 100), allowed(-4, 100), allowed(-3, 100)}, steady(10)...), -1, 0},
		{"open: usage missing: the mean cost is used", failOpen,
			append(steady(10), record{sent: secs(10.6), answered: secs(10.65), status: 200},
				record{sent: secs(10.7), answered: secs(10.75), status: 200},
				record{sent: secs(10.8), answered: secs(10.85), status: 200}), 0.35, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			after, seen, before := failModeSeen(tc.recs, tc.mode, kill, limit, 2*cost, cost)
			assert.Equal(t, tc.before, before)
			if tc.after < 0 {
				assert.False(t, seen, "seen after %v", after)
				return
			}
			require.True(t, seen)
			assert.InDelta(t, tc.after, after.Seconds(), 1e-6)
		})
	}
}

func TestServedFigures(t *testing.T) {
	recs := append(steady(10), record{sent: secs(3.5), answered: secs(3.6), status: 200}, // no usage: the mean
		record{sent: secs(4.5)}, // no answer
		refused(4.6, 503))
	cost, ok := meanCost(recs)
	require.True(t, ok)
	assert.Equal(t, 100.0, cost)
	first, ok := firstDenial(recs)
	require.True(t, ok)
	assert.Zero(t, first)
	assert.Equal(t, 1000.0+100, servedIn(recs, 0, secs(100), cost))
	assert.Equal(t, 300.0+100, servedIn(recs, secs(2), secs(4.5), cost), "sent in [from, to)")
	assert.Equal(t, map[string]int{"2xx": 11, "429": 21, "503": 1, "other": 1}, statusCounts(recs, 0, math.MaxInt64))
	assert.Equal(t, map[string]int{"2xx": 3, "429": 4, "other": 1, "503": 1}, statusCounts(recs, secs(3), secs(5)))

	_, ok = meanCost([]record{refused(1, 429), {status: 200}})
	assert.False(t, ok, "no usage reported")
	_, ok = firstDenial([]record{allowed(1, 10)})
	assert.False(t, ok)
}

func TestAnalyzeGoals(t *testing.T) {
	f := &rateLimitFlags{tokensPerMinute: 6000, duration: 19500 * time.Millisecond}
	t.Run("met", func(t *testing.T) {
		res := roundResult{Fail: failClosed}
		analyze(&res, append(steady(10), refused(10.6, 503)), f, 100, secs(10.5))
		assert.InDelta(t, 10.5, res.WindowS, 1e-9)
		assert.InDelta(t, 1000/10.5*60, res.ServedTokensPerMinute, 1e-6)
		require.Len(t, res.Goals, 2)
		assert.InDelta(t, 0.952, res.ServedRatio, 1e-3)
		assert.True(t, res.Goals[0].Met, "%+v", res.Goals[0])
		assert.True(t, res.Goals[1].Met, "%+v", res.Goals[1])
		require.NotNil(t, res.FailModeAfterS)
		assert.Equal(t, map[string]int{"429": 1, "503": 1}, res.AfterKill)
	})
	t.Run("under the limit", func(t *testing.T) {
		res := roundResult{Fail: failOpen}
		analyze(&res, steady(9), f, 100, secs(10.5)) // 900 tokens in 10.5 s
		assert.False(t, res.Goals[0].Met, "%+v", res.Goals[0])
	})
	t.Run("no kill", func(t *testing.T) {
		res := roundResult{Fail: failOpen}
		analyze(&res, steady(19), f, 100, 0)
		require.Len(t, res.Goals, 1, "no fail mode to see")
		assert.InDelta(t, 19.5, res.WindowS, 1e-9)
		assert.InDelta(t, 1900.0/19.5*60, res.ServedTokensPerMinute, 1e-6)
		assert.True(t, res.Goals[0].Met, "%+v", res.Goals[0])
		assert.Nil(t, res.AfterKill)
	})
	t.Run("never limited", func(t *testing.T) {
		res := roundResult{Fail: failOpen}
		analyze(&res, []record{allowed(1, 100)}, f, 100, secs(10))
		assert.False(t, res.Goals[0].Met)
		assert.Contains(t, res.Goals[0].Got, "not enforced")
		assert.False(t, res.Goals[1].Met)
		assert.Contains(t, res.Goals[1].Got, "never")
	})
}

func TestAnalyzeByProcess(t *testing.T) {
	f := &rateLimitFlags{tokensPerMinute: 6000, duration: 19500 * time.Millisecond, processes: 3}
	recs := steady(10)
	for i := range recs {
		recs[i].proc = i % 3
	}
	recs = append(recs, record{proc: 2, sent: secs(10.6), answered: secs(10.61), status: 503})
	res := roundResult{Fail: failClosed}
	analyze(&res, recs, f, 100, secs(10.5))
	require.Len(t, res.ByProcess, 3)
	before, after := map[string]int{}, map[string]int{}
	for i, pc := range res.ByProcess {
		assert.NotEmpty(t, pc.BeforeKill, "process %d", i)
		for k, v := range pc.BeforeKill {
			before[k] += v
		}
		for k, v := range pc.AfterKill {
			after[k] += v
		}
	}
	assert.Equal(t, res.BeforeKill, before, "the processes' answers add up to the round's")
	assert.Equal(t, res.AfterKill, after)
	assert.Equal(t, 1, res.ByProcess[2].AfterKill["503"])
	assert.Zero(t, res.ByProcess[0].AfterKill["503"])
	require.NotNil(t, res.FailModeAfterS, "the fail mode is seen in any process's answers")
	assert.InDelta(t, 0.11, *res.FailModeAfterS, 1e-6)

	one := roundResult{Fail: failClosed}
	analyze(&one, steady(10), &rateLimitFlags{tokensPerMinute: 6000, duration: 19500 * time.Millisecond, processes: 1}, 100, 0)
	require.Len(t, one.ByProcess, 1)
	assert.Equal(t, one.BeforeKill, one.ByProcess[0].BeforeKill)
}

func TestParseRateLimitFlags(t *testing.T) {
	f, err := parseRateLimitFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"open", "closed"}, f.modes())
	assert.Equal(t, int64(30000), f.tokensPerMinute)
	assert.Equal(t, 2*time.Minute, f.duration)
	f, err = parseRateLimitFlags([]string{"--fail", " closed,closed ,", "--duration", "30s", "--kill-after", "20s"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"closed"}, f.modes())

	assert.Equal(t, 1, f.processes)
	assert.Equal(t, 3, f.activators)
	assert.Equal(t, "3 activators in one kvasir local process", f.mode())

	for _, tc := range []struct {
		args                  []string
		processes, activators int
		mode                  string
	}{
		{[]string{"--processes", "3"}, 3, 1, "3 separate kvasir local processes, 1 activator each"},
		{[]string{"--processes", "2", "--activators", "2"}, 2, 2, "2 separate kvasir local processes, 2 activators each"},
		{[]string{"--activators", "3", "--processes", "3"}, 3, 3, "3 separate kvasir local processes, 3 activators each"},
		{[]string{"--processes", "1", "--activators", "1"}, 1, 1, "1 activators in one kvasir local process"},
	} {
		f, err := parseRateLimitFlags(tc.args, io.Discard)
		require.NoError(t, err, "%v", tc.args)
		assert.Equal(t, tc.processes, f.processes, "%v", tc.args)
		assert.Equal(t, tc.activators, f.activators, "%v", tc.args)
		assert.Equal(t, tc.mode, f.mode(), "%v", tc.args)
	}

	for _, args := range [][]string{
		{"--processes", "0"},
		{"--processes", "-3"},
		{"--processes", "17"},
		{"--processes", "99999999999999999999"},
		{"--processes", "three"},
		{"--processes", "3", "--activators", "0"},
		{"--activators", "65"},
		{"--fail", "sideways"},
		{"--fail", ","},
		{"--tokens-per-minute", "0"},
		{"--overload", "1"},
		{"--overload", "NaN"},
		{"--overload", "+Inf"},
		{"--activators", "0"},
		{"--duration", "30s"}, // the default --kill-after, 90s, is past it
		{"--kill-after", "-1s"},
		{"--max-tokens", "0"},
		{"--timeout", "0s"},
		{"extra"},
		{"--nope"},
	} {
		_, err := parseRateLimitFlags(args, io.Discard)
		assert.Error(t, err, "%v", args)
	}
}

func TestFleetFile(t *testing.T) {
	assert.Contains(t, fleetFile(1234), "tokensPerMinute: 1234")
	assert.Contains(t, fleetFile(1), "fromEnv: "+keyEnv)
}
