package sim

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
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

// TestKVTransferWaitsOutsideTheBatch follows a remote decode in virtual
// time: it takes its blocks at once, waits for the KV of its uncached prompt
// tokens while the batch keeps stepping at decode cost, then joins the batch
// with only its last prompt token to compute.
func TestKVTransferWaitsOutsideTheBatch(t *testing.T) {
	s := testScheduler(t, nil)
	p := s.phys
	step := func() time.Duration {
		t.Helper()
		d, ok := s.plan()
		require.True(t, ok)
		s.vnow += d
		s.complete()
		s.land()
		return d
	}
	hashes := make([]uint64, 250) // a 4000-token prompt: 250 full blocks
	for i := range hashes {
		hashes[i] = uint64(i + 1)
	}
	// 100 blocks of its prefix are cached here already.
	warm := newSeq(1601, 1, false)
	warm.hashes = hashes[:100]
	dec := newSeq(10, 1000, false)
	require.NoError(t, s.submit(warm))
	require.NoError(t, s.submit(dec))
	s.collect()
	step()
	require.True(t, warm.isDone())

	q := newSeq(4000, 5, false)
	q.hashes = hashes
	q.xfer = xferRecv
	require.NoError(t, s.submit(q))
	s.collect()
	start := s.vnow
	d := step()
	assert.Equal(t, p.DecodeBase+p.DecodePerSeq, d, "the transfer costs the batch nothing")
	assert.Equal(t, []*seq{q}, s.receiving)
	assert.Equal(t, []*seq{dec}, s.running)
	assert.Equal(t, 1600, q.cached, "cached_tokens: the local hits before the transfer")
	transfer := p.KVTransferOverhead + (4000-1600)*p.KVTransferPerToken // 14ms
	assert.Equal(t, start+transfer, q.recvEnd)
	assert.Equal(t, 250, len(q.blocks), "blocks taken before the KV arrives")
	hits, _ := s.kv.match(hashes, 250)
	assert.Equal(t, 100, hits, "not findable before it arrives")

	for len(s.landed) == 0 {
		require.Less(t, s.vnow, q.recvEnd)
		step()
	}
	assert.GreaterOrEqual(t, s.vnow, q.recvEnd)
	assert.Less(t, s.vnow-q.recvEnd, p.DecodeBase+p.DecodePerSeq, "lands at the first step end after the transfer")
	hits, _ = s.kv.match(hashes, 250)
	assert.Equal(t, 249, hits, "received blocks are cached; the last prompt token is recomputed")
	assert.Zero(t, q.tokens.Load())

	d = step()
	assert.Equal(t, p.DecodeBase+2*p.DecodePerSeq, d, "the last prompt token costs what a decoding sequence does")
	assert.Equal(t, int64(1), q.tokens.Load())
	hits, _ = s.kv.match(hashes, 250)
	assert.Equal(t, 250, hits)
	assert.Equal(t, []*seq{dec, q}, s.running)
	assert.Greater(t, dec.tokens.Load(), int64(3), "the batch kept decoding during the transfer")

	// With zero latency the KV arrives at once.
	z := testScheduler(t, func(c *Config) { c.ZeroLatency = true })
	zq := newSeq(100, 1, false)
	zq.xfer = xferRecv
	require.NoError(t, z.submit(zq))
	z.collect()
	_, ok := z.plan()
	assert.False(t, ok, "only a transfer started: nothing to compute yet")
	assert.Equal(t, z.vnow, zq.recvEnd)
	z.land()
	_, ok = z.plan()
	require.True(t, ok)
	z.complete()
	assert.True(t, zq.isDone())
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
			if rng.IntN(4) == 0 {
				q.xfer = xferRecv
			}
			require.NoError(t, s.submit(q))
			all = append(all, q)
		}
		if len(all) > 0 && rng.IntN(10) == 0 {
			s.cancel(all[rng.IntN(len(all))])
		}
		s.collect()
		s.land()
		stepped := false
		if s.hasWork() {
			d, ok := s.plan()
			require.True(t, ok || len(s.receiving) > 0, "step %d: work but nothing schedulable", step)
			if ok {
				s.vnow += d
				s.complete()
				stepped = true
			}
		}
		if !stepped && len(s.receiving) > 0 {
			next := s.receiving[0].recvEnd
			for _, q := range s.receiving {
				next = min(next, q.recvEnd)
			}
			s.vnow = max(s.vnow, next) // as run's await does
		}

		held, reserved := 0, 0
		for _, q := range append(slices.Clone(s.receiving), s.landed...) {
			held += len(q.blocks)
			reserved += q.reserved
			require.False(t, q.admitted)
		}
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
	finished, hits, received := 0, 0, 0
	for _, q := range all {
		if q.cached > 0 {
			hits++
		}
		if q.xfer == xferRecv && q.isDone() && q.reason != reasonAbort {
			received++
		}
		if q.isDone() && q.reason != reasonAbort {
			finished++
			assert.Equal(t, int64(q.maxOut), q.tokens.Load())
		}
	}
	assert.Greater(t, finished, 100, "most sequences ran to completion")
	assert.Greater(t, hits, 50, "prefix reuse was exercised")
	assert.Greater(t, blockedOnKV, 10, "queueing with free batch slots (KV or budget bound) was exercised")
	assert.Greater(t, received, 20, "remote decodes were exercised")
	t.Logf("%d sequences, %d finished (%d after a KV transfer), %d with cache hits, %d steps queueing with free batch slots",
		len(all), finished, received, hits, blockedOnKV)
}
