package autoscaler

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCoupleRoles(t *testing.T) {
	bounded := func(lo, hi int) func(int) int { return func(n int) int { return min(max(n, lo), hi) } }
	for _, tc := range []struct {
		name            string
		decode, prefill int
		ratio           *Ratio
		clamp           func(int) int
		want            int
	}{
		{name: "prefill follows decode to zero", decode: 0, prefill: 3, want: 0},
		{name: "prefill wakes with decode", decode: 2, prefill: 0, want: 1},
		{name: "each on its own signals without a ratio", decode: 2, prefill: 5, want: 5},
		{name: "ratio raises prefill", decode: 8, prefill: 1, ratio: &Ratio{Min: 0.25, Max: 1}, want: 2},
		{name: "ratio rounds the minimum up", decode: 5, prefill: 1, ratio: &Ratio{Min: 0.25}, want: 2},
		{name: "ratio lowers prefill", decode: 2, prefill: 6, ratio: &Ratio{Min: 0.25, Max: 1}, want: 2},
		{name: "ratio leaves one prefill while decode runs", decode: 1, prefill: 3, ratio: &Ratio{Max: 0.5}, want: 1},
		{name: "within the ratio nothing changes", decode: 4, prefill: 3, ratio: &Ratio{Min: 0.5, Max: 1}, want: 3},
		{name: "zero together whatever the ratio", decode: 0, prefill: 0, ratio: &Ratio{Min: 1}, want: 0},
		{name: "prefill maxScale wins over the ratio", decode: 8, prefill: 1, ratio: &Ratio{Min: 1}, clamp: bounded(0, 3), want: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := CoupleRoles(Decision{Desired: tc.decode}, Decision{Desired: tc.prefill}, tc.ratio, tc.clamp)
			require.Equal(t, tc.want, got.Desired, got.Reason)
		})
	}
}
