package main

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/kvasir-serving/kvasir/pkg/bench"
)

// hopRow names one hop of the tables of `hops`: the path with it, nginx's
// path in its place, and the path without it.
type hopRow struct {
	hop, backend, with, nginxWith, without string
}

// hopGoals are issue 17's latency goals: a hop's added p50 within 1.5x of
// nginx's, its added p99 within 2x.
var hopGoals = [2]float64{1.5, 2}

// goalOdds is the bootstrap of one hop's pooled added latency against
// nginx's: the share of resamples in which each goal held (nginx's added
// latency taken as 0 where it came out negative), and the middle
// 90% of the ratio over the resamples in which nginx added latency.
type goalOdds struct {
	held     [2]float64 // p50, p99
	lo, hi   [2]float64 // 5th and 95th percentile of the ratio; NaN when undefined
	resample int
}

// bootstrapGoals resamples whole rounds with replacement (the same rounds for
// every path: a round's paths ran back to back, under the same weather) and
// takes each path's pooled p50 and p99 over the resampled rounds' requests,
// as the pooled table does over all of them. rounds maps a path to its
// rounds' latencies, each sorted.
func bootstrapGoals(rounds map[string][][]float64, rows []hopRow, resamples int, rng *rand.Rand) []goalOdds {
	n := -1 // rounds every path has
	for _, r := range rounds {
		if n < 0 || len(r) < n {
			n = len(r)
		}
	}
	out := make([]goalOdds, len(rows))
	if n <= 0 || resamples <= 0 {
		return out
	}
	ratios := make([][2][]float64, len(rows))
	pick := make([]int, n)
	pooled := make(map[string][2]float64, len(rounds))
	var all []float64
	for range resamples {
		for i := range pick {
			pick[i] = rng.IntN(n)
		}
		for name, rs := range rounds {
			all = all[:0]
			for _, i := range pick {
				all = append(all, rs[i]...)
			}
			slices.Sort(all)
			pooled[name] = [2]float64{bench.Percentile(all, 50), bench.Percentile(all, 99)}
		}
		for ri, row := range rows {
			for q := range 2 {
				h := pooled[row.with][q] - pooled[row.without][q]
				ng := pooled[row.nginxWith][q] - pooled[row.without][q]
				// Against a baseline that added nothing (noise can make it
				// negative), the goal holds only for a hop that added
				// nothing either.
				if h <= hopGoals[q]*max(ng, 0) {
					out[ri].held[q]++
				}
				if ng > 0 {
					ratios[ri][q] = append(ratios[ri][q], h/ng)
				}
			}
		}
	}
	for ri := range rows {
		out[ri].resample = resamples
		for q := range 2 {
			out[ri].held[q] /= float64(resamples)
			out[ri].lo[q], out[ri].hi[q] = math.NaN(), math.NaN()
			// Only when nginx added latency in nearly every resample is
			// the interval of the ratio worth printing.
			if r := ratios[ri][q]; len(r) >= resamples*95/100 {
				slices.Sort(r)
				out[ri].lo[q], out[ri].hi[q] = bench.Percentile(r, 5), bench.Percentile(r, 95)
			}
		}
	}
	return out
}
