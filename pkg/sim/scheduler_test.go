package sim

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testScheduler(t *testing.T, mutate func(*Config)) *scheduler {
	t.Helper()
	cfg := DefaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	require.NoError(t, cfg.Validate())
	s := newScheduler(cfg, newMetrics(cfg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.start = time.Now()
	return s
}

func TestStepDurationFormula(t *testing.T) {
	s := testScheduler(t, nil)
	p := s.phys
	q := newSeq(1200, 3, false)
	require.NoError(t, s.submit(q))
	s.collect()

	// Step 1: the whole prompt is prefilled.
	d, ok := s.plan()
	require.True(t, ok)
	want := p.DecodeBase + p.DecodePerSeq + p.PrefillOverhead + time.Duration(1200/p.PrefillTPS*float64(time.Second))
	assert.Equal(t, want, d)
	s.vnow += d
	s.complete()
	assert.Equal(t, int64(1), q.tokens.Load(), "the step that completes prefill emits the first token")

	// Step 2: one decoding sequence.
	d, ok = s.plan()
	require.True(t, ok)
	assert.Equal(t, p.DecodeBase+p.DecodePerSeq, d)
	s.vnow += d
	s.complete()
	s.plan()
	s.complete()
	assert.Equal(t, int64(3), q.tokens.Load())
	assert.True(t, q.isDone())
	assert.Equal(t, reasonStop, q.reason)
	assert.Empty(t, s.running)
	assert.Zero(t, s.kv.used())
	assert.Zero(t, s.reserved)
}

func TestChunkedPrefillBudgetAndDecodeFirst(t *testing.T) {
	s := testScheduler(t, func(c *Config) { c.MaxNumBatchedTokens = 1000; c.MaxNumSeqs = 8 })
	short := newSeq(10, 50, false)
	require.NoError(t, s.submit(short))
	s.collect()
	s.plan()
	s.complete() // short is now decoding

	long := newSeq(2500, 5, false)
	other := newSeq(300, 5, false)
	require.NoError(t, s.submit(long))
	require.NoError(t, s.submit(other))
	s.collect()

	_, ok := s.plan()
	require.True(t, ok)
	require.Equal(t, []*seq{short}, s.decodes)
	require.Equal(t, []*seq{long}, s.prefills, "FCFS: the long prompt takes the rest of the budget")
	assert.Equal(t, 999, long.chunk)
	s.complete()
	assert.Equal(t, 1, s.numWaiting(), "no budget left to admit the second prompt")

	s.plan()
	assert.Equal(t, 999, long.chunk)
	s.complete()
	s.plan()
	assert.Equal(t, 502, long.chunk, "the remainder of the long prompt")
	require.Len(t, s.prefills, 2)
	assert.Equal(t, 300, other.chunk, "the second prompt fits in the leftover budget (497 >= 300)")
}

func TestAdmissionWaitsForKVBlocks(t *testing.T) {
	// 8 blocks of 16 tokens; each sequence needs ceil((100+29-1)/16) = 8.
	s := testScheduler(t, func(c *Config) { c.KVBlocks = 8; c.MaxModelLen = 128 })
	a, b := newSeq(100, 29, false), newSeq(100, 29, false)
	require.NoError(t, s.submit(a))
	require.NoError(t, s.submit(b))
	s.collect()
	s.plan()
	assert.Equal(t, []*seq{a}, s.running, "the second sequence does not fit and waits")
	assert.Equal(t, 1, s.numWaiting())
	assert.Equal(t, 7, s.kv.used(), "prompt blocks taken, output blocks only reserved")
	for !a.isDone() {
		s.complete()
		s.plan()
	}
	assert.Equal(t, []*seq{b}, s.running, "admitted once the first one freed its blocks")
}

func TestFullyCachedPromptRecomputesLastBlock(t *testing.T) {
	s := testScheduler(t, nil)
	hashes := []uint64{1, 2, 3, 4}
	run := func() *seq {
		q := newSeq(64, 1, false) // exactly 4 full blocks
		q.hashes = hashes
		require.NoError(t, s.submit(q))
		s.collect()
		for !q.isDone() {
			s.plan()
			s.complete()
		}
		return q
	}
	assert.Zero(t, run().cached)
	assert.Equal(t, 48, run().cached, "3 of 4 blocks reused; the last one is recomputed")
}

func TestCancelledSequencesLeave(t *testing.T) {
	s := testScheduler(t, func(c *Config) { c.MaxNumSeqs = 1 })
	a, b := newSeq(10, 1000, true), newSeq(10, 1000, true)
	require.NoError(t, s.submit(a))
	require.NoError(t, s.submit(b))
	s.collect()
	s.plan()
	s.complete()
	require.Equal(t, 1, len(s.running))
	require.Equal(t, 1, s.numWaiting())

	s.cancel(a)
	s.cancel(b)
	s.collect()
	assert.Empty(t, s.running)
	assert.Zero(t, s.numWaiting())
	assert.Zero(t, s.kv.used())
	assert.Zero(t, s.reserved)
	assert.Equal(t, reasonAbort, a.reason)
	assert.True(t, b.isDone())
}

func TestMaxLoRAsSkipsWithoutBlocking(t *testing.T) {
	s := testScheduler(t, func(c *Config) { c.EnableLoRA = true; c.MaxLoRAs = 1 })
	a1, b1, base, a2 := newSeq(10, 5, false), newSeq(10, 5, false), newSeq(10, 5, false), newSeq(10, 5, false)
	a1.lora, b1.lora, a2.lora = "a", "b", "a"
	for _, q := range []*seq{a1, b1, base, a2} {
		require.NoError(t, s.submit(q))
	}
	s.collect()
	s.plan()
	assert.Equal(t, []*seq{a1, base, a2}, s.running, "adapter b waits while a holds the only LoRA slot")
	assert.Equal(t, []*seq{b1}, s.waiting[s.whead:])
	assert.Equal(t, map[string]int{"a": 2}, s.runLoRA)
	assert.Equal(t, map[string]int{"b": 1}, s.waitLoRA)
}

// TestSchedulerInvariantsRandomized drives the engine with random prompts
// (sharing prefixes), outputs, adapters and cancellations, checking the
// block accounting after every step.
func TestSchedulerInvariantsRandomized(t *testing.T) {
	s := testScheduler(t, func(c *Config) {
		c.KVBlocks = 40
		c.BlockSize = 4
		c.MaxModelLen = 120
		c.MaxNumSeqs = 6
		c.MaxNumBatchedTokens = 32
		c.EnableLoRA = true
		c.MaxLoRAs = 2
	})
	rng := rand.New(rand.NewPCG(1, 2))
	prefixes := [][]uint64{{1, 2, 3, 4, 5, 6, 7, 8}, {11, 12, 13, 14, 15, 16}, {21, 22}}
	var all []*seq
	blockedOnKV := 0
	for step := range 3000 {
		if rng.IntN(3) == 0 {
			p := prefixes[rng.IntN(len(prefixes))]
			n := 1 + rng.IntN(len(p))
			promptLen := 4*n + rng.IntN(30)
			q := newSeq(promptLen, 1+rng.IntN(min(40, 120-promptLen)), rng.IntN(2) == 0)
			q.hashes = p[:min(n, promptLen/4)]
			if rng.IntN(4) == 0 {
				q.lora = []string{"a", "b", "c"}[rng.IntN(3)]
			}
			require.NoError(t, s.submit(q))
			all = append(all, q)
		}
		if len(all) > 0 && rng.IntN(10) == 0 {
			s.cancel(all[rng.IntN(len(all))])
		}
		s.collect()
		if len(s.running) > 0 || s.numWaiting() > 0 {
			_, ok := s.plan()
			require.True(t, ok, "step %d: work but nothing schedulable", step)
			s.complete()
		}

		held, reserved := 0, 0
		loras := map[string]bool{}
		for _, q := range s.running {
			held += len(q.blocks)
			reserved += q.reserved
			require.LessOrEqual(t, q.generated, q.maxOut)
			require.Less(t, q.cached, q.promptLen)
			if q.lora != "" {
				loras[q.lora] = true
			}
		}
		require.LessOrEqual(t, len(loras), 2, "max-loras")
		if s.numWaiting() > 0 && len(s.running) < 6 && len(loras) < 2 {
			blockedOnKV++
		}
		require.LessOrEqual(t, len(s.running), 6)
		require.Equal(t, reserved, s.reserved)
		require.GreaterOrEqual(t, s.kv.free(), s.reserved, "reservations are always backed by free blocks")
		refs := 0
		for _, r := range s.kv.ref {
			require.GreaterOrEqual(t, r, int32(0))
			refs += int(r)
		}
		require.Equal(t, held, refs, "every reference belongs to a running sequence")
	}
	for _, q := range all {
		s.cancel(q)
	}
	s.collect()
	assert.Zero(t, s.kv.used())
	assert.Zero(t, s.reserved)
	finished, hits := 0, 0
	for _, q := range all {
		if q.cached > 0 {
			hits++
		}
		if q.isDone() && q.reason != reasonAbort {
			finished++
			assert.Equal(t, int64(q.maxOut), q.tokens.Load())
		}
	}
	assert.Greater(t, finished, 100, "most sequences ran to completion")
	assert.Greater(t, hits, 50, "prefix reuse was exercised")
	assert.Greater(t, blockedOnKV, 10, "queueing with free batch slots (KV or budget bound) was exercised")
	t.Logf("%d sequences, %d finished, %d with cache hits, %d steps queueing with free batch slots", len(all), finished, hits, blockedOnKV)
}
