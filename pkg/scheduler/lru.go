package scheduler

// lruSet is a set of hashes with least-recently-used eviction at a fixed
// capacity: a map into a slab of doubly linked nodes.
type lruSet struct {
	cap   int
	index map[uint64]int32
	nodes []lruNode
	head  int32 // most recent
	tail  int32 // least recent
}

type lruNode struct {
	h          uint64
	prev, next int32
}

func newLRUSet(capacity int) *lruSet {
	return &lruSet{cap: capacity, index: map[uint64]int32{}, head: -1, tail: -1}
}

func (s *lruSet) len() int { return len(s.index) }

// leading returns how many leading hashes are in the set.
func (s *lruSet) leading(hs []uint64) int {
	for i, h := range hs {
		if _, ok := s.index[h]; !ok {
			return i
		}
	}
	return len(hs)
}

// touch makes h the most recent, inserting it and evicting the least
// recent beyond capacity.
func (s *lruSet) touch(h uint64) {
	if id, ok := s.index[h]; ok {
		s.unlink(id)
		s.pushFront(id)
		return
	}
	var id int32
	if len(s.index) >= s.cap {
		id = s.tail
		s.unlink(id)
		delete(s.index, s.nodes[id].h)
	} else {
		s.nodes = append(s.nodes, lruNode{})
		id = int32(len(s.nodes) - 1)
	}
	s.nodes[id].h = h
	s.index[h] = id
	s.pushFront(id)
}

func (s *lruSet) unlink(id int32) {
	n := &s.nodes[id]
	if n.prev >= 0 {
		s.nodes[n.prev].next = n.next
	} else {
		s.head = n.next
	}
	if n.next >= 0 {
		s.nodes[n.next].prev = n.prev
	} else {
		s.tail = n.prev
	}
}

func (s *lruSet) pushFront(id int32) {
	n := &s.nodes[id]
	n.prev, n.next = -1, s.head
	if s.head >= 0 {
		s.nodes[s.head].prev = id
	} else {
		s.tail = id
	}
	s.head = id
}
