package lru

import "iter"

// List orders keys from least to most recently used, each with a value of
// type V. The zero List is not ready: use New.
type List[K comparable, V any] struct {
	index  map[K]int32
	nodes  []node[K, V]
	free   []int32 // unused nodes
	oldest int32   // -1 when empty
	newest int32   // -1 when empty
}

type node[K comparable, V any] struct {
	key        K
	val        V
	prev, next int32 // towards the oldest and the newest; -1 at the ends
}

// New returns an empty List.
func New[K comparable, V any]() *List[K, V] {
	return &List[K, V]{index: map[K]int32{}, oldest: -1, newest: -1}
}

// Len returns the number of keys in l.
func (l *List[K, V]) Len() int { return len(l.index) }

// Contains reports whether k is in l, without changing its place.
func (l *List[K, V]) Contains(k K) bool {
	_, ok := l.index[k]
	return ok
}

// Get returns k's value, without changing its place. The pointer is valid
// until l next changes.
func (l *List[K, V]) Get(k K) (*V, bool) {
	i, ok := l.index[k]
	if !ok {
		return nil, false
	}
	return &l.nodes[i].val, true
}

// Touch makes k the most recently used key, inserting it with a zero value
// when absent (added is then true). It returns k's value, valid until l
// next changes.
func (l *List[K, V]) Touch(k K) (v *V, added bool) {
	i, ok := l.index[k]
	if ok {
		if i == l.newest {
			return &l.nodes[i].val, false
		}
		l.unlink(i)
	} else {
		if n := len(l.free); n > 0 {
			i = l.free[n-1]
			l.free = l.free[:n-1]
		} else {
			i = int32(len(l.nodes))
			l.nodes = append(l.nodes, node[K, V]{})
		}
		l.nodes[i] = node[K, V]{key: k}
		l.index[k] = i
	}
	n := &l.nodes[i]
	n.prev, n.next = l.newest, -1
	if l.newest >= 0 {
		l.nodes[l.newest].next = i
	} else {
		l.oldest = i
	}
	l.newest = i
	return &n.val, !ok
}

// Remove drops k; it reports whether k was in l.
func (l *List[K, V]) Remove(k K) bool {
	i, ok := l.index[k]
	if !ok {
		return false
	}
	l.unlink(i)
	delete(l.index, k)
	var zero node[K, V]
	l.nodes[i] = zero // drop references the value may hold
	l.free = append(l.free, i)
	return true
}

// Oldest returns the least recently used key, if l is not empty.
func (l *List[K, V]) Oldest() (K, bool) {
	if l.oldest < 0 {
		var zero K
		return zero, false
	}
	return l.nodes[l.oldest].key, true
}

// RemoveOldest drops the least recently used key and returns it, if l is
// not empty.
func (l *List[K, V]) RemoveOldest() (K, bool) {
	k, ok := l.Oldest()
	if ok {
		l.Remove(k)
	}
	return k, ok
}

// Clear empties l, keeping its memory for reuse.
func (l *List[K, V]) Clear() {
	clear(l.index)
	l.nodes, l.free = l.nodes[:0], l.free[:0]
	l.oldest, l.newest = -1, -1
}

// All yields the keys of l and their values, least recently used first.
// The loop body may Remove the key it was given, but must make no other
// change to l.
func (l *List[K, V]) All() iter.Seq2[K, *V] {
	return func(yield func(K, *V) bool) {
		for i := l.oldest; i >= 0; {
			n := &l.nodes[i]
			next := n.next
			if !yield(n.key, &n.val) {
				return
			}
			i = next
		}
	}
}

func (l *List[K, V]) unlink(i int32) {
	n := &l.nodes[i]
	if n.prev >= 0 {
		l.nodes[n.prev].next = n.next
	} else {
		l.oldest = n.next
	}
	if n.next >= 0 {
		l.nodes[n.next].prev = n.prev
	} else {
		l.newest = n.prev
	}
	n.prev, n.next = -1, -1
}
