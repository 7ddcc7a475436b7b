package sim

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestKVCachePrefixReuseAndLRU(t *testing.T) {
	kv := newKVCache(4)
	require.Equal(t, 4, kv.free())

	// A sequence computes two prompt blocks and registers them.
	a0, a1 := kv.alloc(), kv.alloc()
	require.True(t, kv.register(a0, 100))
	require.True(t, kv.register(a1, 101))
	assert.Equal(t, 2, kv.used())

	hits, idle := kv.match([]uint64{100, 101, 102}, 3)
	assert.Equal(t, 2, hits)
	assert.Equal(t, 0, idle, "referenced blocks are not idle")

	// Released, they stay cached with refcount 0 and count as free.
	kv.release([]int32{a0, a1})
	assert.Equal(t, 4, kv.free())
	hits, idle = kv.match([]uint64{100, 101}, 1)
	assert.Equal(t, 1, hits, "max caps the match")
	assert.Equal(t, 1, idle)

	// Taking a cached block references it again.
	b0 := kv.take(100)
	assert.Equal(t, a0, b0)
	assert.Equal(t, 3, kv.free())
	kv.release([]int32{b0})

	// Unhashed free blocks are used before cached ones; then the least
	// recently used cached block goes first: a1 (released last-block-first
	// before a0, and a0 was touched again since).
	x, y := kv.alloc(), kv.alloc()
	assert.NotContains(t, []int32{a0, a1}, x)
	assert.NotContains(t, []int32{a0, a1}, y)
	z := kv.alloc()
	assert.Equal(t, a1, z, "LRU cached block evicted first")
	hits, _ = kv.match([]uint64{100, 101}, 2)
	assert.Equal(t, 1, hits, "block 101 was evicted, 100 is still cached")
	assert.Equal(t, int32(-1), func() int32 { kv.alloc(); return kv.alloc() }(), "nothing left")
}

func TestKVCacheDuplicateRegistration(t *testing.T) {
	kv := newKVCache(3)
	a, b := kv.alloc(), kv.alloc()
	require.True(t, kv.register(a, 7))
	assert.False(t, kv.register(b, 7), "the same prefix computed twice keeps the first block")
	kv.release([]int32{b})
	// The unhashed duplicate went to the head: it is reused first and the
	// cached block survives.
	assert.Equal(t, b, kv.alloc())
	hits, _ := kv.match([]uint64{7}, 1)
	assert.Equal(t, 1, hits)
}
