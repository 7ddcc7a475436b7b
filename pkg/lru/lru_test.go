package lru

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func keys[V any](l *List[int, V]) []int {
	var out []int
	for k := range l.All() {
		out = append(out, k)
	}
	return out
}

func TestTouchOrders(t *testing.T) {
	l := New[int, string]()
	for _, k := range []int{1, 2, 3} {
		v, added := l.Touch(k)
		require.True(t, added)
		*v = "v"
	}
	require.Equal(t, []int{1, 2, 3}, keys(l))
	v, added := l.Touch(1)
	require.False(t, added)
	require.Equal(t, "v", *v)
	require.Equal(t, []int{2, 3, 1}, keys(l))
	l.Touch(1) // already the newest
	require.Equal(t, []int{2, 3, 1}, keys(l))
	l.Touch(3)
	require.Equal(t, []int{2, 1, 3}, keys(l))
	require.Equal(t, 3, l.Len())
}

func TestRemoveAndReuse(t *testing.T) {
	l := New[int, int]()
	for k := range 4 {
		v, _ := l.Touch(k)
		*v = k * 10
	}
	require.True(t, l.Remove(1))
	require.False(t, l.Remove(1))
	require.False(t, l.Contains(1))
	k, ok := l.RemoveOldest()
	require.True(t, ok)
	require.Equal(t, 0, k)
	require.Equal(t, []int{2, 3}, keys(l))
	v, added := l.Touch(7) // reuses a freed node, with a zero value
	require.True(t, added)
	require.Zero(t, *v)
	require.Len(t, l.nodes, 4)
	got, ok := l.Get(3)
	require.True(t, ok)
	require.Equal(t, 30, *got)
	require.Equal(t, []int{2, 3, 7}, keys(l), "Get does not reorder")
	_, ok = l.Get(1)
	require.False(t, ok)
}

func TestEmptyAndClear(t *testing.T) {
	l := New[int, struct{}]()
	_, ok := l.Oldest()
	require.False(t, ok)
	_, ok = l.RemoveOldest()
	require.False(t, ok)
	l.Touch(1)
	l.Touch(2)
	l.Clear()
	require.Zero(t, l.Len())
	require.Empty(t, keys(l))
	l.Touch(3)
	require.Equal(t, []int{3}, keys(l))
	k, ok := l.Oldest()
	require.True(t, ok)
	require.Equal(t, 3, k)
}

func TestAllRemovingWhileIterating(t *testing.T) {
	l := New[int, bool]()
	for k := range 6 {
		v, _ := l.Touch(k)
		*v = k%2 == 0
	}
	for k, even := range l.All() {
		if k >= 4 {
			break
		}
		if *even {
			l.Remove(k)
		}
	}
	require.Equal(t, []int{1, 3, 4, 5}, keys(l))
}

// TestAgainstSlice checks a random sequence of operations against a plain
// slice ordered oldest first.
func TestAgainstSlice(t *testing.T) {
	l := New[int, int]()
	var ref []int
	seed := uint32(1)
	for range 5000 {
		seed = seed*1664525 + 1013904223
		k := int(seed>>8) % 50
		switch seed >> 30 {
		case 0:
			require.Equal(t, slices.Contains(ref, k), l.Remove(k))
			ref = slices.DeleteFunc(ref, func(x int) bool { return x == k })
		case 1:
			old, ok := l.RemoveOldest()
			require.Equal(t, len(ref) > 0, ok)
			if ok {
				require.Equal(t, ref[0], old)
				ref = ref[1:]
			}
		default:
			_, added := l.Touch(k)
			require.Equal(t, !slices.Contains(ref, k), added)
			ref = append(slices.DeleteFunc(ref, func(x int) bool { return x == k }), k)
		}
		require.Equal(t, len(ref), l.Len())
	}
	require.Equal(t, ref, keys(l))
}

func BenchmarkTouch(b *testing.B) {
	l := New[uint64, struct{}]()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l.Touch(uint64(i % 4096))
		if l.Len() > 2048 {
			l.RemoveOldest()
		}
	}
}
