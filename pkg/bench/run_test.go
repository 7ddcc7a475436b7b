package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunStreamingCountsAndFields(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	cfg.APIKey = "sekret"
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)

	assert.Equal(t, 20, res.Requests)
	assert.Equal(t, 20, res.Completed)
	assert.Equal(t, 0, res.Errors)
	assert.Equal(t, int64(20*5), res.OutputTokens)
	assert.Equal(t, int64(20*fakePrompt), res.InputTokens)
	assert.Equal(t, int64(20*fakeCached), res.CachedTokens)
	assert.InDelta(t, float64(fakeCached)/fakePrompt, res.CacheHitRatio, 1e-12)
	assert.Equal(t, 20, res.UsageReported)
	assert.Positive(t, res.DurationS)
	assert.InDelta(t, 20/res.DurationS, res.ThroughputRPS, 1e-9)
	assert.InDelta(t, 100/res.DurationS, res.OutputTokensPerS, 1e-9)
	assert.True(t, res.TTFTMeasured)
	assert.Positive(t, res.TTFTMeanS)
	assert.LessOrEqual(t, res.TTFTP50S, res.TTFTP90S)
	assert.LessOrEqual(t, res.TTFTP90S, res.TTFTP99S)
	assert.LessOrEqual(t, res.TTFTP99S, res.TTFTMaxS)
	assert.LessOrEqual(t, res.TTFTMaxS, res.E2EMaxS)
	assert.LessOrEqual(t, res.E2EP50S, res.E2EP90S)
	assert.LessOrEqual(t, res.E2EP90S, res.E2EP99S)
	assert.GreaterOrEqual(t, res.ITLMeanS, 0.0) // chunks read together are 0 apart
	assert.LessOrEqual(t, res.ITLP99S, res.E2EMaxS)
	assert.Empty(t, res.ErrorExamples)

	reqs := f.requests()
	require.Len(t, reqs, 20)
	for _, r := range reqs {
		assert.Equal(t, "/v1/chat/completions", r.path)
		assert.Equal(t, "Bearer sekret", r.auth)
		assert.Equal(t, "m", r.req.Model)
		assert.Equal(t, 5, r.req.MaxTokens)
		assert.True(t, r.req.IgnoreEOS)
		assert.True(t, r.req.Stream)
		require.NotNil(t, r.req.StreamOptions)
		assert.True(t, r.req.StreamOptions.IncludeUsage)
		require.Len(t, r.req.Messages, 1)
		assert.Equal(t, "user", r.req.Messages[0].Role)
		assert.Len(t, r.req.Messages[0].Content, 8*CharsPerToken)
	}

	var buf bytes.Buffer
	require.NoError(t, res.WriteJSON(&buf))
	var fields map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &fields))
	for _, k := range []string{"completed", "errors", "duration_s", "throughput_rps", "output_tokens_per_s",
		"ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "itl_mean_s", "e2e_mean_s", "e2e_p99_s",
		"cache_hit_ratio", "e2e_p50_s", "e2e_p90_s"} {
		assert.Contains(t, fields, k)
	}
	assert.Equal(t, float64(20), fields["completed"])
	assert.Equal(t, 0.25, fields["cache_hit_ratio"])

	var table bytes.Buffer
	res.WriteTable(&table)
	assert.Contains(t, table.String(), "Successful requests:")
	assert.Contains(t, table.String(), "Cache hit ratio:")
}

func TestClientMeasuresEveryChunk(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	c := newClient(cfg)
	defer c.close()
	w := mustWorkload(t, cfg)
	req, err := w.Next(context.Background())
	require.NoError(t, err)
	req.WantAnswer = true
	s, answer := c.do(context.Background(), req)
	require.Equal(t, outcomeOK, s.outcome, s.errMsg)
	assert.True(t, s.streamed)
	assert.Equal(t, 5, s.chunks, "the role chunk and the finish chunk carry no token")
	assert.Len(t, s.itl, 4, "one gap between each two successive tokens")
	assert.Positive(t, s.ttft)
	assert.GreaterOrEqual(t, s.e2e, s.ttft)
	assert.Equal(t, f.requests()[0].answer, answer)
	assert.Equal(t, 5, s.output)
	assert.Equal(t, fakePrompt, s.prompt)
	assert.Equal(t, fakeCached, s.cached)
}

func TestRunNonStreamingCompletions(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	cfg.Stream = false
	cfg.Endpoint = EndpointCompletions
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)

	assert.Equal(t, 20, res.Completed)
	assert.Equal(t, int64(100), res.OutputTokens)
	assert.False(t, res.TTFTMeasured)
	assert.Zero(t, res.TTFTMeanS)
	assert.Zero(t, res.TTFTP99S)
	assert.Zero(t, res.ITLMeanS)
	assert.Positive(t, res.E2EMeanS)
	for _, r := range f.requests() {
		assert.Equal(t, "/v1/completions", r.path)
		assert.False(t, r.req.Stream)
		assert.Nil(t, r.req.StreamOptions)
		require.NotNil(t, r.req.Prompt)
		assert.Len(t, *r.req.Prompt, 8*CharsPerToken)
		assert.Empty(t, r.req.Messages)
	}
	var table bytes.Buffer
	res.WriteTable(&table)
	assert.Contains(t, table.String(), "not measured")
}

func TestOutputTokensFallBackToContentChunks(t *testing.T) {
	f := newFake(t, func(f *fakeServer) { f.noUsage = true })
	cfg := testConfig(f)
	cfg.Endpoint = EndpointCompletions
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	assert.Equal(t, 20, res.Completed)
	assert.Equal(t, int64(20*5), res.OutputTokens) // 5 text chunks each
	assert.Zero(t, res.UsageReported)
	assert.Zero(t, res.CacheHitRatio)
	assert.Equal(t, int64(20*8), res.InputTokens) // the client's estimate
}

func TestErrorsCounted(t *testing.T) {
	fate := func(seq int) failure {
		switch {
		case seq%5 == 0:
			return fail500
		case seq%7 == 3:
			return failSSE
		case seq == 13:
			return failTruncate
		}
		return failNone
	}
	f := newFake(t, func(f *fakeServer) { f.fail = fate })
	cfg := testConfig(f)
	cfg.NumPrompts = 35
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)

	want := map[failure]int{}
	for seq := range 35 {
		want[fate(seq)]++
	}
	assert.Equal(t, 35, res.Requests)
	assert.Equal(t, want[failNone], res.Completed)
	assert.Equal(t, want[fail500]+want[failSSE]+want[failTruncate], res.Errors)
	assert.Equal(t, int64(want[failNone]*5), res.OutputTokens)

	byMsg := map[string]int{}
	for _, e := range res.ErrorExamples {
		byMsg[e.Message] = e.Count
	}
	assert.Equal(t, want[fail500], byMsg["HTTP 500: engine exploded on request 0"]+byMsg["HTTP 500: engine exploded on request 1"])
	assert.Equal(t, want[failSSE], byMsg["stream error event: engine died mid-stream"])
	assert.Equal(t, want[failTruncate], byMsg["stream ended before data: [DONE]"])

	var table bytes.Buffer
	res.WriteTable(&table)
	assert.Contains(t, table.String(), "engine died mid-stream")
}

func TestTransportErrorCounted(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	f.Close() // nothing listens any more
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	assert.Equal(t, 0, res.Completed)
	assert.Equal(t, 20, res.Errors)
	require.NotEmpty(t, res.ErrorExamples)
	assert.Contains(t, res.ErrorExamples[0].Message, "connect")
}

func TestWarmupExcludedAndAllFailingWarmupAborts(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	cfg.Warmup = 3
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	assert.Equal(t, 20, res.Requests)
	assert.Equal(t, 20, res.Completed)
	assert.Len(t, f.requests(), 23)

	bad := newFake(t, func(f *fakeServer) { f.fail = func(int) failure { return fail500 } })
	cfg = testConfig(bad)
	cfg.Warmup = 2
	_, err = Run(context.Background(), cfg)
	require.ErrorContains(t, err, "warm-up: all 2 requests failed")
	assert.Len(t, bad.requests(), 2)
}

func TestMaxConcurrencyNeverExceeded(t *testing.T) {
	for _, rate := range []float64{0, 1e6} { // closed loop; open loop far faster than the cap allows
		const limit, total = 4, 40
		f := newFake(t, func(f *fakeServer) { f.gate = newGate(limit, total) })
		cfg := testConfig(f)
		cfg.NumPrompts = total
		cfg.MaxConcurrency = limit
		cfg.Rate = rate
		res, err := Run(context.Background(), cfg)
		requireNoErr(t, res, err)
		assert.Equal(t, total, res.Completed, "rate %v", rate)
		assert.Equal(t, limit, f.maxConcurrent(), "rate %v: the cap is reached and never exceeded", rate)
	}
}

func TestOpenLoopIssuesAllRequests(t *testing.T) {
	for _, arrival := range []string{ArrivalPoisson, ArrivalConstant} {
		f := newFake(t, nil)
		cfg := testConfig(f)
		cfg.Rate = 400
		cfg.Arrival = arrival
		cfg.MaxConcurrency = 0 // unlimited
		cfg.NumPrompts = 60
		res, err := Run(context.Background(), cfg)
		requireNoErr(t, res, err)
		assert.Equal(t, 60, res.Requests, arrival)
		assert.Equal(t, 60, res.Completed, arrival)
		assert.Len(t, f.requests(), 60, arrival)
	}
}

func TestDurationStopsIssuing(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	cfg.Rate = 20
	cfg.Arrival = ArrivalConstant
	cfg.NumPrompts = 1000 // 50 s at this rate
	cfg.Duration = 200 * time.Millisecond
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	assert.Positive(t, res.Requests)
	assert.Less(t, res.Requests, 1000)
	assert.Equal(t, res.Requests, res.Completed)
}

func TestCancelReturnsPartialResult(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := newFake(t, func(f *fakeServer) { f.seen = make(chan int, 100) })
	cfg := testConfig(f)
	cfg.Rate = 1 // arrival i is due at i seconds
	cfg.Arrival = ArrivalConstant
	cfg.NumPrompts = 100
	done := make(chan struct{})
	var res *Result
	var err error
	go func() {
		defer close(done)
		res, err = Run(ctx, cfg)
	}()
	<-f.seen // the first request reached the server
	cancel()
	<-done
	require.ErrorIs(t, err, context.Canceled)
	require.NotNil(t, res)
	assert.Less(t, res.Requests, 100)
}

func TestMultiTurnResendsHistoryWithReceivedAnswers(t *testing.T) {
	for _, stream := range []bool{true, false} {
		f := newFake(t, nil)
		cfg := testConfig(f)
		cfg.Workload = WorkloadMultiTurn
		cfg.Conversations = 5
		cfg.Turns = 3
		cfg.SystemPromptLen = 10
		cfg.QuestionLen = 6
		cfg.NumPrompts = 0 // conversations*turns
		cfg.MaxConcurrency = 3
		cfg.Stream = stream
		res, err := Run(context.Background(), cfg)
		requireNoErr(t, res, err)
		assert.Equal(t, 15, res.Completed)

		reqs := f.requests()
		require.Len(t, reqs, 15)
		answerOf := map[string][]message{} // answer -> the messages it answered
		for _, r := range reqs {
			answerOf[r.answer] = r.req.Messages
		}
		turns := map[string]int{} // system prompt -> turns seen
		for _, r := range reqs {
			m := r.req.Messages
			require.Equal(t, "system", m[0].Role)
			assert.Len(t, m[0].Content, 10*CharsPerToken)
			turns[m[0].Content]++
			require.Equal(t, 0, len(m)%2, "system + (user, assistant)* + user")
			for i := 1; i < len(m); i += 2 {
				assert.Equal(t, "user", m[i].Role)
				assert.Len(t, m[i].Content, 6*CharsPerToken)
				if i+1 < len(m) {
					a := m[i+1]
					assert.Equal(t, "assistant", a.Role)
					prev, ok := answerOf[a.Content]
					require.True(t, ok, "assistant message %q is an answer the server sent", a.Content)
					assert.Equal(t, m[:i+1], prev, "and it answered exactly the history before it")
				}
			}
		}
		assert.Len(t, turns, 5)
		for _, n := range turns {
			assert.Equal(t, 3, n)
		}
	}
}

func TestMultiTurnFailedTurnEndsConversationBudgetKept(t *testing.T) {
	f := newFake(t, func(f *fakeServer) {
		f.fail = func(seq int) failure {
			if seq == 1 {
				return fail500
			}
			return failNone
		}
	})
	cfg := testConfig(f)
	cfg.Workload = WorkloadMultiTurn
	cfg.Conversations = 2
	cfg.Turns = 3
	cfg.NumPrompts = 0
	cfg.MaxConcurrency = 1
	cfg.SystemPromptLen = 0
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	assert.Equal(t, 6, res.Requests)
	assert.Equal(t, 1, res.Errors)
	assert.Equal(t, 5, res.Completed)
	reqs := f.requests()
	failed := reqs[1].req.Messages
	failedQuestion := failed[len(failed)-1].Content
	assert.Len(t, failed, 3, "request 1 is the second turn of the first conversation")
	for _, r := range reqs {
		assert.Equal(t, "user", r.req.Messages[0].Role, "no system prompt with --system-prompt-len 0")
		if r.seq > 1 {
			for _, m := range r.req.Messages {
				assert.NotEqual(t, failedQuestion, m.Content, "the failed turn gets no follow-up")
			}
		}
	}
	assert.Len(t, reqs[2].req.Messages, 1, "a new conversation takes the remaining budget")
}

func TestSharedPrefixRunsAllPromptsOfAllGroups(t *testing.T) {
	f := newFake(t, nil)
	cfg := testConfig(f)
	cfg.Workload = WorkloadSharedPrefix
	cfg.Groups = 3
	cfg.PromptsPerGroup = 4
	cfg.SystemPromptLen = 16
	cfg.QuestionLen = 4
	cfg.NumPrompts = 0
	res, err := Run(context.Background(), cfg)
	requireNoErr(t, res, err)
	assert.Equal(t, 12, res.Completed)
	systems := map[string]int{}
	for _, r := range f.requests() {
		systems[r.req.Messages[0].Content]++
	}
	assert.Len(t, systems, 3)
}

func TestScanChunk(t *testing.T) {
	c := scanChunk([]byte(`{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`), true, true)
	assert.False(t, c.content)
	c = scanChunk([]byte(`{"choices": [{"delta": {"content": "a \"q\" b"}, "logprobs": null}]}`), true, true)
	assert.True(t, c.content)
	assert.Equal(t, `a "q" b`, string(c.text))
	c = scanChunk([]byte(`{"choices":[{"delta":{"content":null},"logprobs":{"content":[{"token":"x"}]}}]}`), true, false)
	assert.False(t, c.content)
	c = scanChunk([]byte(`{"choices":[{"delta":{"reasoning_content":"hmm"}}]}`), true, true)
	assert.True(t, c.content)
	assert.Empty(t, c.text, "reasoning is a token but not part of the answer")
	c = scanChunk([]byte(`{"choices":[{"text":"hi","finish_reason":null}]}`), false, true)
	assert.True(t, c.content)
	assert.Equal(t, "hi", string(c.text))
	c = scanChunk([]byte(`{"choices":[{"delta":{},"finish_reason":"error"}]}`), true, false)
	assert.False(t, c.isErr, `a "finish_reason":"error" value is not an error key`)
	c = scanChunk([]byte(`{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}`), true, false)
	require.NotNil(t, c.usage)
	assert.Equal(t, 7, c.usage.prompt())
	assert.Equal(t, 4, c.usage.cached())
	assert.Equal(t, 3, c.usage.CompletionTokens)
	c = scanChunk([]byte(`{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":null}}`), true, false)
	require.NotNil(t, c.usage)
	assert.Equal(t, 0, c.usage.cached())
	c = scanChunk([]byte(`{"error":{"message":"overloaded","type":"server_error","code":503}}`), true, false)
	assert.True(t, c.isErr)
	assert.Equal(t, "overloaded", c.errMsg)
	c = scanChunk([]byte(`{"object":"error","message":"bad things","code":400}`), true, false)
	assert.True(t, c.isErr)
	assert.Equal(t, "bad things", c.errMsg)
	c = scanChunk([]byte(`{"choices":[{"delta":{"content":"say \"error\": now"}}]}`), true, false)
	assert.False(t, c.isErr)
	assert.True(t, c.content)
}

func TestErrorText(t *testing.T) {
	assert.Equal(t, "nope", errorText([]byte(`{"error":{"message":"nope","type":"x"}}`)))
	assert.Equal(t, "plain text", errorText([]byte("plain text\n")))
	assert.Equal(t, "(empty body)", errorText(nil))
	assert.True(t, strings.HasSuffix(errorText([]byte(strings.Repeat("x", 500))), "..."))
}
