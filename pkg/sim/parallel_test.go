package sim

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The speed model of docs/simulator.md, "Parallelism", with the h100-8b
// profile: sizes of 1 keep the lone engine's step exactly; tensor
// parallelism divides compute and adds its all-reduces; pipeline
// parallelism adds a latency per stage boundary; data parallelism splits
// the step over its ranks.
func TestStepDuration(t *testing.T) {
	ph, _ := Profile(ProfileH100Llama8B)
	us := time.Microsecond
	for _, tc := range []struct {
		name                   string
		par                    Parallel
		seqs, decodes, prefill int
		want                   time.Duration
	}{
		{name: "lone decode", par: Parallel{1, 1, 1, false}, seqs: 1, decodes: 1, want: 6350 * us},
		{name: "full batch", par: Parallel{1, 1, 1, false}, seqs: 256, decodes: 256, want: 95600 * us},
		{name: "prefill of 6000", par: Parallel{1, 1, 1, false}, seqs: 1, prefill: 6000, want: 6350*us + 500*time.Millisecond + 15*time.Millisecond},
		// (6ms + 0.35ms) / 2 + 0.5ms + 2us × 2(1)/2 × 1 token
		{name: "TP 2 lone decode", par: Parallel{2, 1, 1, false}, seqs: 1, decodes: 1, want: 3175*us + 500*us + 2*us},
		// (6ms + 256 × 0.35ms) / 2 + 0.5ms + 2us × 1 × 256 tokens
		{name: "TP 2 full batch", par: Parallel{2, 1, 1, false}, seqs: 256, decodes: 256, want: 47800*us + 500*us + 512*us},
		// TP 8: ring factor 2 × 7/8 = 1.75
		{name: "TP 8 lone decode", par: Parallel{8, 1, 1, false}, seqs: 1, decodes: 1, want: 6350*us/8 + 500*us + 3500*time.Nanosecond},
		// 6000 / (12000 × 2) s + 15ms, and 6000 tokens' all-reduce
		{name: "TP 2 prefill", par: Parallel{2, 1, 1, false}, seqs: 1, prefill: 6000,
			want: 3175*us + 250*time.Millisecond + 15*time.Millisecond + 500*us + 12000*us},
		{name: "PP 4 adds three stage boundaries", par: Parallel{1, 4, 1, false}, seqs: 1, decodes: 1, want: 6350*us + 1500*us},
		{name: "DP 4 splits the batch", par: Parallel{1, 1, 4, false}, seqs: 256, decodes: 256, want: 6000*us + 64*350*us},
		{name: "DP 4 rounds a rank's share up", par: Parallel{1, 1, 4, false}, seqs: 5, decodes: 5, want: 6000*us + 2*350*us},
		{name: "expert parallelism changes nothing", par: Parallel{2, 1, 1, true}, seqs: 1, decodes: 1, want: 3175*us + 500*us + 2*us},
		{name: "zero values act as 1", par: Parallel{}, seqs: 1, decodes: 1, want: 6350 * us},
		{name: "zero physics", par: Parallel{8, 4, 2, false}, seqs: 9, decodes: 9, prefill: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			phys := ph
			if tc.name == "zero physics" {
				phys = Physics{}
			}
			require.Equal(t, tc.want, tc.par.stepDuration(phys, tc.seqs, tc.decodes, tc.prefill))
		})
	}
	// Tensor parallelism pays off where compute dominates.
	one := Parallel{1, 1, 1, false}.stepDuration(ph, 64, 64, 0)
	two := Parallel{2, 1, 1, false}.stepDuration(ph, 64, 64, 0)
	require.Less(t, two, one*6/10)
}

// Data parallelism multiplies the sequences served at once and the KV
// cache; tensor and pipeline parallelism leave them.
func TestDataParallelCapacity(t *testing.T) {
	c := DefaultConfig()
	c.MaxNumSeqs = 4
	c.MaxNumBatchedTokens = 64
	c.Parallel = Parallel{Tensor: 2, Pipeline: 2, Data: 3}
	s := newScheduler(c, newMetrics(c), nil)
	require.Equal(t, 12, s.maxSeqs)
	require.Equal(t, 192, s.budget)
	require.Equal(t, 3*c.NumKVBlocks(), s.kv.numBlocks())
}
