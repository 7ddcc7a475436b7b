package traffic

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSplitPickCoversPercents(t *testing.T) {
	s, err := New([]Target{{Revision: "a", Percent: 90}, {Revision: "b", Percent: 10, Tag: "canary"}, {Revision: "c", Tag: "old"}})
	require.NoError(t, err)
	counts := map[string]int{}
	for r := 0; r < 100; r++ {
		counts[s.Pick(r)]++
	}
	require.Equal(t, map[string]int{"a": 90, "b": 10}, counts)
	rev, ok := s.Tagged("old")
	require.True(t, ok)
	require.Equal(t, "c", rev)
	_, ok = s.Tagged("nope")
	require.False(t, ok)
}

func TestSplitRejectsBadTargets(t *testing.T) {
	for name, targets := range map[string][]Target{
		"empty":     nil,
		"sum":       {{Revision: "a", Percent: 50}, {Revision: "b", Percent: 40}},
		"dup tag":   {{Revision: "a", Percent: 50, Tag: "x"}, {Revision: "b", Percent: 50, Tag: "x"}},
		"range":     {{Revision: "a", Percent: 150}, {Revision: "b", Percent: -50}},
		"no target": {{Percent: 100}},
	} {
		_, err := New(targets)
		require.Error(t, err, name)
	}
	s, err := New([]Target{{Revision: "only"}})
	require.NoError(t, err)
	require.Equal(t, "only", s.Pick(99))
}

func TestSplitModelTag(t *testing.T) {
	n, tag := SplitModelTag("llama@canary")
	require.Equal(t, "llama", n)
	require.Equal(t, "canary", tag)
	n, tag = SplitModelTag("llama")
	require.Equal(t, "llama", n)
	require.Empty(t, tag)
}
