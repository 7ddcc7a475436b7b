package bench

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func drain(t *testing.T, w Workload) []wireRequest {
	t.Helper()
	var out []wireRequest
	for {
		r, err := w.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return out
		}
		require.NoError(t, err)
		var wr wireRequest
		require.NoError(t, json.Unmarshal(r.Body, &wr))
		out = append(out, wr)
		w.Complete(r, "answer", nil)
	}
}

func isWords(s string) bool {
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' || strings.Contains(s, "  ") {
		return false
	}
	for _, c := range s {
		if c != ' ' && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

func TestSharedPrefixGroups(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Model = "m"
	cfg.Workload = WorkloadSharedPrefix
	cfg.Groups, cfg.PromptsPerGroup = 5, 7
	cfg.SystemPromptLen, cfg.QuestionLen, cfg.OutputLen = 64, 16, 9
	w, err := NewWorkload(cfg)
	require.NoError(t, err)
	require.Equal(t, 35, w.Len())
	reqs := drain(t, w)
	require.Len(t, reqs, 35)

	perSystem := map[string]int{}
	questions := map[string]bool{}
	for _, r := range reqs {
		require.Len(t, r.Messages, 2)
		sys, q := r.Messages[0], r.Messages[1]
		assert.Equal(t, "system", sys.Role)
		assert.Equal(t, "user", q.Role)
		assert.Len(t, sys.Content, 64*CharsPerToken, "≈ 4 characters a token")
		assert.Len(t, q.Content, 16*CharsPerToken)
		assert.True(t, isWords(sys.Content) && isWords(q.Content), "random lowercase words")
		assert.Equal(t, 9, r.MaxTokens)
		perSystem[sys.Content]++
		questions[q.Content] = true
	}
	assert.Len(t, perSystem, 5, "one system prompt per group, distinct across groups")
	for _, n := range perSystem {
		assert.Equal(t, 7, n, "shared by every prompt of its group")
	}
	assert.Len(t, questions, 35, "every question is its own")

	firstGroup := 0
	for _, r := range reqs[:7] {
		if r.Messages[0].Content == reqs[0].Messages[0].Content {
			firstGroup++
		}
	}
	assert.Less(t, firstGroup, 7, "groups are shuffled together")

	again, err := NewWorkload(cfg)
	require.NoError(t, err)
	assert.Equal(t, reqs, drain(t, again), "the seed makes the workload reproducible")
	cfg.Seed = 2
	other, err := NewWorkload(cfg)
	require.NoError(t, err)
	assert.NotEqual(t, reqs, drain(t, other))
}

func TestSharedPrefixNumPromptsCyclesAndTruncates(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Model = "m"
	cfg.Workload = WorkloadSharedPrefix
	cfg.Groups, cfg.PromptsPerGroup, cfg.SystemPromptLen, cfg.QuestionLen = 2, 3, 4, 2
	full := drain(t, mustWorkload(t, cfg))

	cfg.NumPrompts = 4
	assert.Equal(t, full[:4], drain(t, mustWorkload(t, cfg)))
	cfg.NumPrompts = 14
	long := drain(t, mustWorkload(t, cfg))
	require.Len(t, long, 14)
	for i, r := range long {
		assert.Equal(t, full[i%6], r)
	}
}

func mustWorkload(t *testing.T, cfg Config) Workload {
	t.Helper()
	w, err := NewWorkload(cfg)
	require.NoError(t, err)
	return w
}

func TestSharedPrefixDefaultSystemPromptLen(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Model = "m"
	cfg.Workload = WorkloadSharedPrefix
	cfg.Groups, cfg.PromptsPerGroup = 1, 1
	reqs := drain(t, mustWorkload(t, cfg))
	require.Len(t, reqs, 1)
	assert.Len(t, reqs[0].Messages[0].Content, 2048*CharsPerToken)
	assert.Len(t, reqs[0].Messages[1].Content, 128*CharsPerToken)
}

func TestRandomLengths(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Model = "m"
	cfg.InputLen, cfg.OutputLen, cfg.RangeRatio, cfg.NumPrompts = 40, 20, 0.5, 200
	reqs := drain(t, mustWorkload(t, cfg))
	require.Len(t, reqs, 200)
	inLens, outLens := map[int]bool{}, map[int]bool{}
	for _, r := range reqs {
		require.Len(t, r.Messages, 1)
		n := len(r.Messages[0].Content)
		assert.Zero(t, n%CharsPerToken)
		assert.True(t, isWords(r.Messages[0].Content))
		assert.GreaterOrEqual(t, n/CharsPerToken, 20)
		assert.LessOrEqual(t, n/CharsPerToken, 40)
		assert.GreaterOrEqual(t, r.MaxTokens, 10)
		assert.LessOrEqual(t, r.MaxTokens, 20)
		inLens[n/CharsPerToken] = true
		outLens[r.MaxTokens] = true
	}
	assert.Greater(t, len(inLens), 10, "lengths vary across the range")
	assert.Greater(t, len(outLens), 5)

	cfg.RangeRatio = 1
	for _, r := range drain(t, mustWorkload(t, cfg)) {
		assert.Len(t, r.Messages[0].Content, 40*CharsPerToken)
		assert.Equal(t, 20, r.MaxTokens)
	}
}

func TestMultiTurnWorkloadOrderAndBudget(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Model = "m"
	cfg.Workload = WorkloadMultiTurn
	cfg.Conversations, cfg.Turns, cfg.QuestionLen = 2, 3, 2
	cfg.NumPrompts = 5 // the second conversation gets two turns
	w := mustWorkload(t, cfg)
	require.Equal(t, 5, w.Len())
	ctx := context.Background()

	a0, err := w.Next(ctx)
	require.NoError(t, err)
	b0, err := w.Next(ctx)
	require.NoError(t, err)
	assert.True(t, a0.WantAnswer)
	assert.NotEqual(t, a0.conv, b0.conv)

	// Nothing is ready until a turn completes: Next blocks.
	blocked, cancel := context.WithCancel(ctx)
	cancel()
	_, err = w.Next(blocked)
	require.ErrorIs(t, err, context.Canceled)

	w.Complete(b0, "B0", nil)
	b1, err := w.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, b0.conv, b1.conv)
	assert.Equal(t, 1, b1.turn)
	var body wireRequest
	require.NoError(t, json.Unmarshal(b1.Body, &body))
	require.Len(t, body.Messages, 3)
	assert.Equal(t, "B0", body.Messages[1].Content)
	assert.Equal(t, "assistant", body.Messages[1].Role)

	w.Complete(a0, "", errors.New("boom")) // conversation a ends: its 2 unsent turns return to the budget
	c0, err := w.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, 0, c0.turn)
	assert.NotEqual(t, a0.conv, c0.conv)
	require.NoError(t, json.Unmarshal(c0.Body, &body))
	require.Len(t, body.Messages, 1, "a new conversation starts from scratch")

	w.Complete(b1, "B1", nil) // b has no third turn: the budget of 5 is b's 2 + a's 1 + c's 2
	w.Complete(c0, "C0", nil)
	c1, err := w.Next(ctx)
	require.NoError(t, err)
	assert.Equal(t, c0.conv, c1.conv)
	w.Complete(c1, "C1", nil)
	_, err = w.Next(ctx)
	require.ErrorIs(t, err, io.EOF)
}
