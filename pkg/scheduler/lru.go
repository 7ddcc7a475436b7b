package scheduler

import "github.com/kvasir-serving/kvasir/pkg/lru"

// lruSet is a set of hashes with least-recently-used eviction at a fixed
// capacity.
type lruSet struct {
	cap  int
	list *lru.List[uint64, struct{}]
}

func newLRUSet(capacity int) *lruSet {
	return &lruSet{cap: capacity, list: lru.New[uint64, struct{}]()}
}

func (s *lruSet) len() int { return s.list.Len() }

// leading returns how many leading hashes are in the set.
func (s *lruSet) leading(hs []uint64) int {
	for i, h := range hs {
		if !s.list.Contains(h) {
			return i
		}
	}
	return len(hs)
}

// touch makes h the most recent, inserting it and evicting the least
// recent beyond capacity.
func (s *lruSet) touch(h uint64) {
	if _, added := s.list.Touch(h); added && s.list.Len() > s.cap {
		s.list.RemoveOldest()
	}
}
