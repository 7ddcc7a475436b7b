package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// synthRounds makes n rounds of m latencies: base plus add, each sorted.
func synthRounds(rng *rand.Rand, n, m int, add float64) [][]float64 {
	out := make([][]float64, n)
	for i := range out {
		r := make([]float64, m)
		for j := range r {
			r[j] = 0.001 + rng.ExpFloat64()*0.0002 + add
		}
		slices.Sort(r)
		out[i] = r
	}
	return out
}

func TestBootstrapGoals(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	rounds := map[string][][]float64{
		"base":  synthRounds(rng, 20, 200, 0),
		"nginx": synthRounds(rng, 20, 200, 100e-6),
		"close": synthRounds(rng, 20, 200, 120e-6), // 1.2x nginx's added latency
		"far":   synthRounds(rng, 20, 200, 400e-6), // 4x
	}
	rows := []hopRow{
		{"close", "base", "close", "nginx", "base"},
		{"far", "base", "far", "nginx", "base"},
		{"nginx", "base", "nginx", "nginx", "base"},
	}
	odds := bootstrapGoals(rounds, rows, 200, rand.New(rand.NewPCG(1, 2)))
	require.Len(t, odds, 3)

	require.Greater(t, odds[0].held[0], 0.9, "1.2x is within 1.5x in nearly every resample")
	require.Less(t, odds[1].held[0], 0.1, "4x is not")
	require.Less(t, odds[1].held[1], 0.1)
	require.Equal(t, [2]float64{1, 1}, odds[2].held, "nginx against itself always holds")
	require.InDelta(t, 1, odds[2].lo[0], 1e-9)
	require.InDelta(t, 1, odds[2].hi[0], 1e-9)
	for _, o := range odds[:2] {
		require.False(t, math.IsNaN(o.lo[0]))
		require.LessOrEqual(t, o.lo[0], o.hi[0])
	}
	require.Less(t, odds[0].lo[0], 1.5)
	require.Greater(t, odds[1].lo[0], 2.0)
	require.Equal(t, 200, odds[0].resample)

	// A baseline that adds nothing leaves the ratio undefined, not a number.
	rounds["same"] = rounds["base"]
	odds = bootstrapGoals(rounds, []hopRow{{"far", "base", "far", "same", "base"}}, 50, rand.New(rand.NewPCG(1, 2)))
	require.True(t, math.IsNaN(odds[0].lo[0]))
	require.Zero(t, odds[0].held[0])

	require.Equal(t, make([]goalOdds, 1), bootstrapGoals(nil, rows[:1], 10, rng), "no rounds: nothing resampled")
}
