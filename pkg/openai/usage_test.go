package openai

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUsageHeaderRoundTrip(t *testing.T) {
	u := UsageOf([]byte(`{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}}`))
	require.NotNil(t, u)
	v := FormatUsageHeader(u)
	assert.Equal(t, "prompt=12, completion=3, cached=8", v)
	got, ok := ParseUsageHeader(v)
	require.True(t, ok)
	assert.Equal(t, u.PromptTokens, got.PromptTokens)
	assert.Equal(t, u.CompletionTokens, got.CompletionTokens)
	assert.Equal(t, uint64(8), got.Cached())

	got, ok = ParseUsageHeader("completion=0,prompt=5")
	require.True(t, ok)
	assert.Equal(t, uint64(0), got.Cached())
	assert.Empty(t, FormatUsageHeader(nil))
}

func TestParseUsageHeaderHostile(t *testing.T) {
	for _, v := range []string{
		"",
		"prompt=1",                         // no completion
		"completion=1",                     // no prompt
		"prompt=1, completion=2, prompt=3", // repeated
		"prompt=1, completion=2, total=3",  // unknown key
		"prompt=-1, completion=2",          // negative
		"prompt=1e3, completion=2",         // not decimal
		"prompt=1, completion=99999999999999999999",         // overflow
		"prompt=1, completion=2, cached=5",                  // cached above prompt
		"prompt 1, completion 2",                            // no '='
		"prompt=1,, completion=2",                           // empty part
		"prompt=1, completion=2" + strings.Repeat(" ", 200), // too long
	} {
		_, ok := ParseUsageHeader(v)
		assert.False(t, ok, "%q", v)
	}
}

func TestUsageOf(t *testing.T) {
	for _, b := range []string{`{}`, `{"usage":null}`, `{"usage":"x"}`, `not json`, `[]`} {
		assert.Nil(t, UsageOf([]byte(b)), b)
	}
	assert.Equal(t, uint64(0), (*Usage)(nil).Cached())
}
