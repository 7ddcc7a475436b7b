package tokenizer

import (
	"hash/maphash"
	"math"
	"sync"
)

// model is a byte-level BPE model. Tokens are ids; a word is a byte string
// (the byte-level runes are only the vocabulary's spelling of bytes).
type model struct {
	// byteID[b] is the id of the token of the single byte b, or -1.
	byteID [256]int64
	// merges maps a pair of ids (a<<32 | b) to rank<<32 | merged id.
	merges map[uint64]uint64
	// words maps the bytes of every vocabulary token spelt in the
	// byte-level alphabet to its id; only with ignore_merges.
	words        map[string]uint32
	ignoreMerges bool
	unk          int64 // the id of unk_token, or -1
	fuseUnk      bool
	cache        *wordCache
}

const noRank = math.MaxUint32

// pairKey packs a pair of ids.
func pairKey(a, b uint32) uint64 { return uint64(a)<<32 | uint64(b) }

// lookup returns the rank and merged id of the pair (a, b), rank noRank if
// the pair does not merge.
func (m *model) lookup(a, b uint32) (rank, id uint32) {
	v, ok := m.merges[pairKey(a, b)]
	if !ok {
		return noRank, 0
	}
	return uint32(v >> 32), uint32(v)
}

const (
	// cacheMaxWord is the length of the longest word cached, in bytes.
	cacheMaxWord = 64
	// scanMaxSyms is the most symbols mergeScan merges; longer words go to
	// mergeQueue.
	scanMaxSyms = 48
)

// encodeWord appends the ids of one pre-tokenized word.
func (m *model) encodeWord(e *encoder, w []byte) {
	if len(w) == 1 && m.byteID[w[0]] >= 0 {
		e.dst = append(e.dst, uint32(m.byteID[w[0]]))
		return
	}
	if m.ignoreMerges {
		if id, ok := m.words[string(w)]; ok {
			e.dst = append(e.dst, id)
			return
		}
	}
	cacheable := m.cache != nil && len(w) <= cacheMaxWord
	var h uint64
	if cacheable {
		h = maphash.Bytes(m.cache.seed, w)
		if ids, ok := m.cache.get(h, w); ok {
			e.dst = append(e.dst, ids...)
			return
		}
	}
	syms := m.initial(e.syms[:0], w)
	if len(syms) > scanMaxSyms {
		syms = m.mergeQueue(e, syms)
	} else {
		syms = m.mergeScan(e, syms)
	}
	e.syms = syms[:0]
	e.dst = append(e.dst, syms...)
	if cacheable {
		m.cache.put(h, w, syms)
	}
}

// initial returns the symbols of w before merging: the token of each byte,
// unknown bytes becoming unk_token (fused when fuse_unk) or, without one,
// dropped, as Hugging Face's BPE does.
func (m *model) initial(syms []uint32, w []byte) []uint32 {
	pending := false
	for _, b := range w {
		if id := m.byteID[b]; id >= 0 {
			if pending {
				syms = append(syms, uint32(m.unk))
				pending = false
			}
			syms = append(syms, uint32(id))
			continue
		}
		if m.unk < 0 {
			continue
		}
		if pending && !m.fuseUnk {
			syms = append(syms, uint32(m.unk))
		}
		pending = true
	}
	if pending {
		syms = append(syms, uint32(m.unk))
	}
	return syms
}

// mergeScan merges syms in place: while some adjacent pair merges, the pair
// of the lowest rank, the leftmost of equals, becomes its merged token.
func (m *model) mergeScan(e *encoder, syms []uint32) []uint32 {
	if len(syms) < 2 {
		return syms
	}
	n := len(syms) - 1
	ranks, ids := grow(e.ranks, n), grow(e.ids, n)
	for i := 0; i < n; i++ {
		ranks[i], ids[i] = m.lookup(syms[i], syms[i+1])
	}
	for {
		best, br := -1, uint32(noRank)
		for i, r := range ranks {
			if r < br {
				best, br = i, r
			}
		}
		if best < 0 {
			break
		}
		syms[best] = ids[best]
		copy(syms[best+1:], syms[best+2:])
		syms = syms[:len(syms)-1]
		copy(ranks[best:], ranks[best+1:])
		ranks = ranks[:len(ranks)-1]
		copy(ids[best:], ids[best+1:])
		ids = ids[:len(ids)-1]
		if best > 0 {
			ranks[best-1], ids[best-1] = m.lookup(syms[best-1], syms[best])
		}
		if best < len(ranks) {
			ranks[best], ids[best] = m.lookup(syms[best], syms[best+1])
		}
	}
	e.ranks, e.ids = ranks[:0], ids[:0]
	return syms
}

func grow(s []uint32, n int) []uint32 {
	if cap(s) < n {
		return make([]uint32, n, 2*n)
	}
	return s[:n]
}

// A queued merge of the symbol at pos with its right neighbour.
type qmerge struct {
	rank, id uint32
	pos      int32
}

func (a qmerge) less(b qmerge) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

// mergeQueue gives mergeScan's result in O(n log n), for long words: the
// algorithm of Hugging Face's Word::merge_all (a queue of candidate merges
// by rank then position; stale candidates are skipped).
func (m *model) mergeQueue(e *encoder, syms []uint32) []uint32 {
	n := len(syms)
	prev, next := make([]int32, n), make([]int32, n)
	alive := make([]bool, n)
	q := e.queue[:0]
	for i := range syms {
		prev[i], next[i], alive[i] = int32(i-1), int32(i+1), true
		if i+1 < n {
			if r, id := m.lookup(syms[i], syms[i+1]); r != noRank {
				q = heapPush(q, qmerge{r, id, int32(i)})
			}
		}
	}
	next[n-1] = -1
	for len(q) > 0 {
		var top qmerge
		top, q = heapPop(q)
		p := top.pos
		if !alive[p] || next[p] < 0 {
			continue
		}
		right := next[p]
		if r, id := m.lookup(syms[p], syms[right]); r == noRank || id != top.id {
			continue // stale
		}
		syms[p] = top.id
		alive[right] = false
		next[p] = next[right]
		if next[p] >= 0 {
			prev[next[p]] = p
		}
		if prev[p] >= 0 {
			if r, id := m.lookup(syms[prev[p]], syms[p]); r != noRank {
				q = heapPush(q, qmerge{r, id, prev[p]})
			}
		}
		if next[p] >= 0 {
			if r, id := m.lookup(syms[p], syms[next[p]]); r != noRank {
				q = heapPush(q, qmerge{r, id, p})
			}
		}
	}
	e.queue = q[:0]
	out := syms[:0]
	for i := range n {
		if alive[i] {
			out = append(out, syms[i])
		}
	}
	return out
}

func heapPush(h []qmerge, x qmerge) []qmerge {
	h = append(h, x)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	return h
}

func heapPop(h []qmerge) (qmerge, []qmerge) {
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	i := 0
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		c := l
		if r := l + 1; r < len(h) && h[r].less(h[l]) {
			c = r
		}
		if !h[c].less(h[i]) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	return top, h
}

// wordCache holds the ids of recently encoded words: cacheShards maps of at
// most cacheShardSize entries each, a full map being emptied before it takes
// a new word. Values are never modified once stored.
type wordCache struct {
	seed   maphash.Seed
	shards [cacheShards]cacheShard
}

const (
	cacheShards    = 64
	cacheShardSize = 512
)

type cacheShard struct {
	mu sync.Mutex
	m  map[string][]uint32
	_  [40]byte // keep shards on separate cache lines
}

func newWordCache() *wordCache {
	c := &wordCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string][]uint32)
	}
	return c
}

func (c *wordCache) get(h uint64, w []byte) ([]uint32, bool) {
	s := &c.shards[h%cacheShards]
	s.mu.Lock()
	ids, ok := s.m[string(w)]
	s.mu.Unlock()
	return ids, ok
}

func (c *wordCache) put(h uint64, w []byte, ids []uint32) {
	v := append([]uint32(nil), ids...)
	s := &c.shards[h%cacheShards]
	s.mu.Lock()
	if len(s.m) >= cacheShardSize {
		clear(s.m)
	}
	s.m[string(w)] = v
	s.mu.Unlock()
}
