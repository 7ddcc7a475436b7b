package sim

// kvCache is a paged KV cache with prefix reuse, modelled on vLLM's v1 block
// pool. Every block has a reference count; blocks with count zero sit in one
// free queue in eviction order (head first). A freed block that holds a full
// prompt block keeps its hash, stays findable by prefix matching and is
// appended to the tail (least recently used at the head); an unhashed freed
// block goes to the head, to be reused first. Allocation pops the head and
// evicts its hash, if any.
//
// It is owned by the scheduler goroutine and not safe for concurrent use.
type kvCache struct {
	ref    []int32
	hash   []uint64
	hashed []bool
	prev   []int32 // free-queue links, -1 at the ends
	next   []int32
	inFree []bool
	head   int32
	tail   int32
	nfree  int
	index  map[uint64]int32

	// onEvict, when set, is called with every hash that leaves the index
	// because its block is reused.
	onEvict func(h uint64)
}

func newKVCache(blocks int) *kvCache {
	kv := &kvCache{
		ref:    make([]int32, blocks),
		hash:   make([]uint64, blocks),
		hashed: make([]bool, blocks),
		prev:   make([]int32, blocks),
		next:   make([]int32, blocks),
		inFree: make([]bool, blocks),
		head:   -1,
		tail:   -1,
		index:  make(map[uint64]int32),
	}
	for i := range blocks {
		kv.pushTail(int32(i))
	}
	return kv
}

func (kv *kvCache) numBlocks() int { return len(kv.ref) }

// free returns the number of unreferenced blocks (empty or cached).
func (kv *kvCache) free() int { return kv.nfree }

// used returns the number of blocks referenced by sequences.
func (kv *kvCache) used() int { return len(kv.ref) - kv.nfree }

// match returns how many leading hashes (at most max) are cached, and how
// many of those blocks are unreferenced (taking them shrinks the free pool).
func (kv *kvCache) match(hashes []uint64, max int) (hits, idle int) {
	for _, h := range hashes[:min(len(hashes), max)] {
		id, ok := kv.index[h]
		if !ok {
			break
		}
		hits++
		if kv.ref[id] == 0 {
			idle++
		}
	}
	return hits, idle
}

// take references the cached block of hash h, which match found.
func (kv *kvCache) take(h uint64) int32 {
	id := kv.index[h]
	if kv.ref[id] == 0 {
		kv.unlink(id)
	}
	kv.ref[id]++
	return id
}

// alloc takes the head of the free queue, evicting its cached hash. It
// returns -1 when no block is free.
func (kv *kvCache) alloc() int32 {
	id := kv.head
	if id < 0 {
		return -1
	}
	kv.unlink(id)
	if kv.hashed[id] {
		if kv.index[kv.hash[id]] == id {
			delete(kv.index, kv.hash[id])
			if kv.onEvict != nil {
				kv.onEvict(kv.hash[id])
			}
		}
		kv.hashed[id] = false
	}
	kv.ref[id] = 1
	return id
}

// register makes block id findable under hash h. It reports false when
// another block already holds h (both computed the same prefix concurrently);
// the block then stays unhashed, as in vLLM.
func (kv *kvCache) register(id int32, h uint64) bool {
	if _, dup := kv.index[h]; dup || kv.hashed[id] {
		return false
	}
	kv.index[h] = id
	kv.hash[id] = h
	kv.hashed[id] = true
	return true
}

// reset forgets every cached hash, as vLLM's reset_prefix_cache does, when
// no block is referenced; otherwise it changes nothing and reports false.
func (kv *kvCache) reset() bool {
	if kv.used() > 0 {
		return false
	}
	clear(kv.hashed)
	clear(kv.index)
	return true
}

// release drops one reference to each block, last block first, so that the
// tail of a freed prefix is evicted before its head.
func (kv *kvCache) release(ids []int32) {
	for i := len(ids) - 1; i >= 0; i-- {
		id := ids[i]
		kv.ref[id]--
		if kv.ref[id] > 0 {
			continue
		}
		if kv.hashed[id] {
			kv.pushTail(id)
		} else {
			kv.pushHead(id)
		}
	}
}

func (kv *kvCache) pushTail(id int32) {
	kv.prev[id], kv.next[id] = kv.tail, -1
	if kv.tail >= 0 {
		kv.next[kv.tail] = id
	} else {
		kv.head = id
	}
	kv.tail = id
	kv.inFree[id] = true
	kv.nfree++
}

func (kv *kvCache) pushHead(id int32) {
	kv.prev[id], kv.next[id] = -1, kv.head
	if kv.head >= 0 {
		kv.prev[kv.head] = id
	} else {
		kv.tail = id
	}
	kv.head = id
	kv.inFree[id] = true
	kv.nfree++
}

func (kv *kvCache) unlink(id int32) {
	if !kv.inFree[id] {
		return
	}
	p, n := kv.prev[id], kv.next[id]
	if p >= 0 {
		kv.next[p] = n
	} else {
		kv.head = n
	}
	if n >= 0 {
		kv.prev[n] = p
	} else {
		kv.tail = p
	}
	kv.inFree[id] = false
	kv.nfree--
}
