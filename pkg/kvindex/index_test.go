package kvindex

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

const bs = 4 // tokens per block: 16 bytes

func newIndex(t *testing.T, now *time.Time) *Index {
	t.Helper()
	opts := []Option{}
	if now != nil {
		opts = append(opts, WithClock(func() time.Time { return *now }))
	}
	return New(slog.New(slog.DiscardHandler), opts...)
}

func snapshot(pod string, seq uint64, hashes ...uint64) stats.KVEvent {
	return stats.KVEvent{Pod: pod, BlockSize: bs, Seq: seq, Reset: true, Added: hashes}
}

func match(ix *Index, hashes []uint64) [MaxPods]int {
	var out [MaxPods]int
	ix.Match(hashes, &out)
	return out
}

// A block that matches after a mismatch is no hit: the hashes are chained,
// so the same text after a different block hashes differently.
func TestChainedHashesNoHitAfterMismatch(t *testing.T) {
	ix := newIndex(t, nil)
	a := ix.AddPod("a")
	shared := strings.Repeat("0123456789abcdef", 3) // 3 blocks
	held := prompt.BlockHashes([]byte(shared+"XXXXXXXXXXXXXXXX"+strings.Repeat("tail-tail-tail-t", 4)), bs)
	require.True(t, ix.Apply(snapshot("a", 1, held...)))

	req := prompt.BlockHashes([]byte(shared+"YYYYYYYYYYYYYYYY"+strings.Repeat("tail-tail-tail-t", 4)), bs)
	require.Len(t, req, 8)
	require.Equal(t, held[:3], req[:3])
	require.NotEqual(t, held[4:], req[4:], "identical text after the mismatch must hash differently")
	require.Equal(t, 3, match(ix, req)[a])

	// Even an index fed unchained hashes (a hole) stops at the first miss.
	ix2 := newIndex(t, nil)
	b := ix2.AddPod("b")
	ix2.Apply(snapshot("b", 1, held[0], held[1], held[3], held[4]))
	require.Equal(t, 2, match(ix2, held)[b])
}

func TestSnapshotDeltasAndGaps(t *testing.T) {
	ix := newIndex(t, nil)
	a, b := ix.AddPod("a"), ix.AddPod("b")
	require.NotEqual(t, a, b)
	require.False(t, ix.Apply(stats.KVEvent{Pod: "unknown", BlockSize: bs, Reset: true, Added: []uint64{1}}))

	// Deltas before a snapshot are ignored.
	require.False(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 1, Added: []uint64{1}}))
	require.True(t, ix.Apply(snapshot("a", 5, 1, 2, 3)))
	require.True(t, ix.Apply(snapshot("b", 1, 1, 2)))
	m := match(ix, []uint64{1, 2, 3, 4})
	require.Equal(t, 3, m[a])
	require.Equal(t, 2, m[b])

	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 6, Added: []uint64{4}, Removed: []uint64{3}}))
	m = match(ix, []uint64{1, 2, 3, 4})
	require.Equal(t, 2, m[a], "block 3 removed: the chain breaks there")
	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 7, Added: []uint64{3}}))
	require.Equal(t, 4, match(ix, []uint64{1, 2, 3, 4})[a])
	info, _ := ix.Pod("a")
	require.Equal(t, 4, info.Blocks)

	// A gap drops the pod's blocks until the next snapshot.
	require.False(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 9, Added: []uint64{5}}))
	require.Equal(t, 0, match(ix, []uint64{1, 2, 3, 4})[a])
	require.False(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 10, Added: []uint64{1}}))
	require.True(t, ix.Apply(snapshot("a", 11, 1)))
	require.Equal(t, 1, match(ix, []uint64{1, 2})[a])

	// A different block size is refused.
	require.False(t, ix.Apply(stats.KVEvent{Pod: "b", BlockSize: bs * 2, Seq: 2, Added: []uint64{9}}))

	ix.RemovePod("b")
	require.Equal(t, map[string][]uint64{"a": {1}}, ix.Confirmed())
	c := ix.AddPod("c")
	require.Equal(t, b, c, "the freed slot is reused")
	require.Equal(t, 0, match(ix, []uint64{1, 2})[c], "a reused slot starts empty")
}

func TestSpeculationExpiresAndIsConfirmed(t *testing.T) {
	now := time.Unix(1000, 0)
	ix := newIndex(t, &now)
	a, b := ix.AddPod("a"), ix.AddPod("b")
	ix.Apply(snapshot("a", 1))
	ix.Apply(snapshot("b", 1))
	hs := []uint64{10, 11, 12}

	ix.Speculate(a, hs, time.Second)
	m := match(ix, hs)
	require.Equal(t, 3, m[a])
	require.Equal(t, 0, m[b])
	require.Empty(t, ix.Confirmed()["a"], "speculation is not confirmed state")
	var conf [MaxPods]int
	ix.MatchConfirmed(hs, &conf)
	require.Equal(t, 0, conf[a])

	// b's report confirms two of the blocks for b; a's speculation expires.
	ix.Apply(stats.KVEvent{Pod: "b", BlockSize: bs, Seq: 2, Added: []uint64{10, 11}})
	now = now.Add(2 * time.Second)
	ix.Speculate(b, []uint64{99}, time.Second) // any write expires old speculation
	m = match(ix, hs)
	require.Equal(t, 0, m[a])
	require.Equal(t, 2, m[b])

	// A confirmed block stays when a speculation on it expires.
	ix.Speculate(a, hs, time.Second)
	ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 2, Added: []uint64{10}})
	now = now.Add(2 * time.Second)
	ix.Speculate(b, []uint64{98}, time.Second)
	require.Equal(t, 1, match(ix, hs)[a])

	// Speculation of a departed pod does not leak into the slot's next owner.
	ix.Speculate(a, []uint64{50, 51}, time.Hour)
	ix.RemovePod("a")
	c := ix.AddPod("c")
	require.Equal(t, a, c)
	require.Equal(t, 0, match(ix, []uint64{50, 51})[c])
}

// Two indexes fed the same streams hold the same confirmed state, whatever
// each speculated.
func TestSameStreamsSameIndex(t *testing.T) {
	events := []stats.KVEvent{
		snapshot("a", 3, 1, 2, 3), snapshot("b", 1),
		{Pod: "a", BlockSize: bs, Seq: 4, Added: []uint64{4, 5}, Removed: []uint64{1}},
		{Pod: "b", BlockSize: bs, Seq: 2, Added: []uint64{1, 2}},
		{Pod: "a", BlockSize: bs, Seq: 5, Removed: []uint64{2}},
	}
	var idx [2]*Index
	for i := range idx {
		idx[i] = newIndex(t, nil)
		idx[i].AddPod("a")
		idx[i].AddPod("b")
	}
	idx[0].Speculate(0, []uint64{7, 8}, time.Hour)
	idx[1].Speculate(1, []uint64{1, 9}, time.Hour)
	for _, ev := range events {
		idx[0].Apply(ev)
	}
	// The second replica gets each pod's stream in order, but b's first.
	for _, pod := range []string{"b", "a"} {
		for _, ev := range events {
			if ev.Pod == pod {
				idx[1].Apply(ev)
			}
		}
	}
	require.Equal(t, idx[0].Confirmed(), idx[1].Confirmed())
	require.Equal(t, map[string][]uint64{"a": {3, 4, 5}, "b": {1, 2}}, idx[0].Confirmed())
	require.Equal(t, idx[0].Evicted(), idx[1].Evicted())
	require.Equal(t, map[string][]uint64{"a": {1, 2}, "b": {}}, idx[0].Evicted())
}

func TestIndexFull(t *testing.T) {
	ix := newIndex(t, nil)
	for i := range MaxPods {
		require.Equal(t, i, ix.AddPod(string(rune('A'+i))))
	}
	require.Equal(t, -1, ix.AddPod("one-too-many"))
}

// BenchmarkMatch8kTokens64Pods: an 8,000-token prompt (500 blocks of 16)
// against 64 pods that all hold a long shared prefix.
func BenchmarkMatch8kTokens64Pods(b *testing.B) {
	ix := New(slog.New(slog.DiscardHandler))
	text := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 712))
	hashes := prompt.BlockHashes(text, 16)
	for i := range MaxPods {
		name := string(rune('A' + i))
		ix.AddPod(name)
		ix.Apply(stats.KVEvent{Pod: name, BlockSize: 16, Seq: 1, Reset: true, Added: hashes[:len(hashes)*(i+1)/MaxPods]})
	}
	var out [MaxPods]int
	b.ReportAllocs()
	for b.Loop() {
		ix.Match(hashes, &out)
	}
}

// A pod whose engine evicted a prefix is remembered as its former holder
// (MatchWithEvicted), until it holds it again or forgets the eviction; a
// removed pod's slot does not inherit it.
func TestEvictedBlocksAreRememberedBounded(t *testing.T) {
	ix := newIndex(t, nil)
	a, b := ix.AddPod("a"), ix.AddPod("b")
	hs := prompt.BlockHashes([]byte(strings.Repeat("0123456789abcdef", 6)), bs)
	require.True(t, ix.Apply(snapshot("a", 1, hs...)))
	require.True(t, ix.Apply(snapshot("b", 1)))
	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 2, Removed: hs[2:]}))

	var now, former [MaxPods]int
	ix.MatchWithEvicted(hs, &now, &former)
	require.Equal(t, 2, now[a], "a holds the first two blocks")
	require.Equal(t, len(hs), former[a], "and held all of them")
	require.Equal(t, 0, former[b])
	require.Equal(t, 2, match(ix, hs)[a], "Match counts held blocks only")

	// Holding the blocks again ends the memory of their eviction.
	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 3, Added: hs[2:]}))
	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 4, Removed: hs}))
	ix.MatchWithEvicted(hs, &now, &former)
	require.Equal(t, 0, now[a])
	require.Equal(t, len(hs), former[a])

	// The memory is bounded: after a cache's worth of newer evictions
	// (minEvicted when the pod reports no capacity), the old ones are gone.
	var churn []uint64
	for i := range minEvicted {
		churn = append(churn, uint64(1_000_000+i))
	}
	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 5, Added: churn}))
	require.True(t, ix.Apply(stats.KVEvent{Pod: "a", BlockSize: bs, Seq: 6, Removed: churn}))
	ix.MatchWithEvicted(hs, &now, &former)
	require.Equal(t, 0, former[a])
	require.LessOrEqual(t, len(ix.blocks), minEvicted, "forgotten entries are deleted")

	// A removed pod's evictions go with it.
	require.True(t, ix.Apply(stats.KVEvent{Pod: "b", BlockSize: bs, Seq: 2, Added: hs}))
	require.True(t, ix.Apply(stats.KVEvent{Pod: "b", BlockSize: bs, Seq: 3, Removed: hs}))
	ix.RemovePod("b")
	c := ix.AddPod("c")
	require.Equal(t, b, c, "the slot is reused")
	ix.MatchWithEvicted(hs, &now, &former)
	require.Equal(t, 0, former[c])
}
