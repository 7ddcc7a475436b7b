package kvindex

import (
	"log/slog"
	"math/bits"
	"slices"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// MaxPods is how many pods one Index tracks: block membership is a 64-bit
// set per block. Pods beyond it are routed without prefix knowledge.
const MaxPods = 64

// entry is the set of pods holding a block: confirmed by their reports, or
// speculated by a recent routing decision; and the pods that held it until
// their engine evicted it (was).
type entry struct {
	held, spec, was uint64
}

type pod struct {
	name     string
	slot     int
	seq      uint64
	synced   bool // a snapshot was applied and no delta was missed since
	capacity int
	blocks   int // confirmed blocks held
	// evicted lists the blocks the pod's engine evicted, oldest first, up
	// to maxEvicted: the blocks whose was bit is this pod's.
	evicted []uint64
}

// maxEvicted bounds each pod's memory of evicted blocks: its reported
// capacity (a cache's worth), within [minEvicted, maxEvictedCap].
func (p *pod) maxEvicted() int {
	return min(max(p.capacity, minEvicted), maxEvictedCap)
}

const (
	minEvicted    = 1 << 12
	maxEvictedCap = 1 << 17
)

type speculation struct {
	deadline time.Time
	slot     int
	gen      uint32
	hashes   []uint64
}

// Index is the prefix-cache map of one pool. It is safe for concurrent use.
type Index struct {
	log *slog.Logger
	now func() time.Time

	mu        sync.RWMutex
	blockSize int
	pods      map[string]*pod
	slots     [MaxPods]*pod
	gens      [MaxPods]uint32
	used      uint64 // slots in use
	blocks    map[uint64]entry
	specs     []speculation // in order of creation
	warned    bool
}

// Option configures an Index.
type Option func(*Index)

// WithClock sets the clock (tests).
func WithClock(now func() time.Time) Option { return func(ix *Index) { ix.now = now } }

// New returns an empty index.
func New(log *slog.Logger, opts ...Option) *Index {
	ix := &Index{log: log, now: time.Now, pods: map[string]*pod{}, blocks: map[uint64]entry{}}
	for _, o := range opts {
		o(ix)
	}
	return ix
}

// AddPod makes a pod known and returns its slot, or -1 when the index is
// full. Adding a known pod returns its slot.
func (ix *Index) AddPod(name string) int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if p, ok := ix.pods[name]; ok {
		return p.slot
	}
	if ix.used == ^uint64(0) {
		if !ix.warned {
			ix.log.Warn("prefix index full; further pods are routed without prefix knowledge", slog.Int("max", MaxPods))
			ix.warned = true
		}
		return -1
	}
	slot := bits.TrailingZeros64(^ix.used)
	p := &pod{name: name, slot: slot}
	ix.used |= 1 << slot
	ix.gens[slot]++
	ix.slots[slot] = p
	ix.pods[name] = p
	return slot
}

// RemovePod forgets a pod and every block it held.
func (ix *Index) RemovePod(name string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	p, ok := ix.pods[name]
	if !ok {
		return
	}
	ix.clearLocked(p.slot, true)
	ix.used &^= 1 << p.slot
	ix.slots[p.slot] = nil
	delete(ix.pods, name)
	if len(ix.pods) == 0 {
		ix.blockSize = 0
	}
}

// clearLocked drops a slot's confirmed blocks (and speculative ones too
// when all).
func (ix *Index) clearLocked(slot int, all bool) {
	bit := uint64(1) << slot
	for h, e := range ix.blocks {
		if e.held&bit == 0 && (!all || (e.spec|e.was)&bit == 0) {
			continue
		}
		e.held &^= bit
		if all {
			e.spec &^= bit
			e.was &^= bit
		}
		ix.store(h, e)
	}
	ix.slots[slot].blocks = 0
	if all {
		ix.slots[slot].evicted = nil
	}
}

func (ix *Index) store(h uint64, e entry) {
	if e.held|e.spec|e.was == 0 {
		delete(ix.blocks, h)
	} else {
		ix.blocks[h] = e
	}
}

// Apply applies one KV event of a known pod; it reports whether the event
// was used. A snapshot (Reset) replaces the pod's blocks; a delta must follow
// the previous event's Seq, else the pod's blocks are dropped until the next
// snapshot (which a re-dialled stream starts with).
func (ix *Index) Apply(ev stats.KVEvent) bool {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	p, ok := ix.pods[ev.Pod]
	if !ok {
		return false
	}
	if ev.BlockSize <= 0 {
		return false
	}
	if ix.blockSize == 0 || len(ix.pods) == 1 && ev.Reset {
		ix.blockSize = ev.BlockSize
	}
	if ev.BlockSize != ix.blockSize {
		ix.log.Warn("pod reports a different KV block size than its pool; ignoring its blocks",
			slog.String("pod", ev.Pod), slog.Int("blockSize", ev.BlockSize), slog.Int("poolBlockSize", ix.blockSize))
		return false
	}
	ix.expireLocked()
	switch {
	case ev.Reset:
		ix.clearLocked(p.slot, false)
		p.synced = true
	case !p.synced:
		return false
	case ev.Seq != p.seq+1:
		ix.log.Warn("gap in a pod's KV events; dropping its blocks until the next snapshot",
			slog.String("pod", ev.Pod), slog.Uint64("seq", ev.Seq), slog.Uint64("expected", p.seq+1))
		ix.clearLocked(p.slot, false)
		p.synced = false
		return false
	}
	p.seq, p.capacity = ev.Seq, ev.Capacity
	bit := uint64(1) << p.slot
	for _, h := range ev.Removed {
		if e, ok := ix.blocks[h]; ok && e.held&bit != 0 {
			e.held &^= bit
			e.was |= bit
			p.blocks--
			ix.blocks[h] = e
			ix.rememberEvictedLocked(p, h)
		}
	}
	for _, h := range ev.Added {
		e := ix.blocks[h]
		if e.held&bit == 0 {
			p.blocks++
		}
		e.held |= bit
		e.spec &^= bit // confirmed now
		e.was &^= bit
		ix.blocks[h] = e
	}
	return true
}

// rememberEvictedLocked records that p's engine evicted h, forgetting the
// pod's oldest evictions beyond its bound. (An old record of a block that
// was evicted again since clears the newer one early: the memory is
// approximate, and the same for every activator that follows the pod.)
func (ix *Index) rememberEvictedLocked(p *pod, h uint64) {
	p.evicted = append(p.evicted, h)
	over := len(p.evicted) - p.maxEvicted()
	if over <= 0 {
		return
	}
	bit := uint64(1) << p.slot
	for _, old := range p.evicted[:over] {
		if e, ok := ix.blocks[old]; ok && e.was&bit != 0 {
			e.was &^= bit
			ix.store(old, e)
		}
	}
	// Slicing forward is enough: append's next reallocation drops the head.
	p.evicted = p.evicted[over:]
}

// BlockSize is the pool's KV block size in tokens; 0 before any report.
func (ix *Index) BlockSize() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.blockSize
}

// Match sets out[slot] to the number of leading hashes each pod holds
// (confirmed or speculated); out must have MaxPods entries. A block counts
// only when every block before it matched too.
func (ix *Index) Match(hashes []uint64, out *[MaxPods]int) {
	var former [MaxPods]int
	ix.match(hashes, out, &former, true)
}

// MatchWithEvicted is Match that also sets former[slot] to the leading
// hashes each pod holds or held until its engine evicted them: where the
// prefix lived, when no pod holds it any more.
func (ix *Index) MatchWithEvicted(hashes []uint64, out, former *[MaxPods]int) {
	ix.match(hashes, out, former, true)
}

// MatchConfirmed is Match over the confirmed blocks only: what the pods'
// queue-proxies reported, not where this activator just sent prompts.
func (ix *Index) MatchConfirmed(hashes []uint64, out *[MaxPods]int) {
	var former [MaxPods]int
	ix.match(hashes, out, &former, false)
}

func (ix *Index) match(hashes []uint64, out, former *[MaxPods]int, speculative bool) {
	*out, *former = [MaxPods]int{}, [MaxPods]int{}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	cand, candF := ix.used, ix.used
	for i, h := range hashes {
		if candF == 0 {
			return
		}
		e := ix.blocks[h]
		held := e.held
		if speculative {
			held |= e.spec
		}
		still := held & cand
		for lost := cand &^ still; lost != 0; lost &= lost - 1 {
			out[bits.TrailingZeros64(lost)] = i
		}
		cand = still
		stillF := (held | e.was) & candF
		for lost := candF &^ stillF; lost != 0; lost &= lost - 1 {
			former[bits.TrailingZeros64(lost)] = i
		}
		candF = stillF
	}
	for ; cand != 0; cand &= cand - 1 {
		out[bits.TrailingZeros64(cand)] = len(hashes)
	}
	for ; candF != 0; candF &= candF - 1 {
		former[bits.TrailingZeros64(candF)] = len(hashes)
	}
}

// Speculate records that the pod in slot is about to hold hashes, for ttl
// or until its queue-proxy confirms them.
func (ix *Index) Speculate(slot int, hashes []uint64, ttl time.Duration) {
	if slot < 0 || slot >= MaxPods || len(hashes) == 0 {
		return
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.expireLocked()
	if ix.slots[slot] == nil {
		return
	}
	bit := uint64(1) << slot
	var fresh []uint64
	for _, h := range hashes {
		e := ix.blocks[h]
		if (e.held|e.spec)&bit != 0 {
			continue
		}
		e.spec |= bit
		ix.blocks[h] = e
		fresh = append(fresh, h)
	}
	if len(fresh) > 0 {
		ix.specs = append(ix.specs, speculation{deadline: ix.now().Add(ttl), slot: slot, gen: ix.gens[slot], hashes: fresh})
	}
}

// expireLocked drops speculations whose time is up.
func (ix *Index) expireLocked() {
	now := ix.now()
	n := 0
	for n < len(ix.specs) && !ix.specs[n].deadline.After(now) {
		s := ix.specs[n]
		if ix.gens[s.slot] == s.gen {
			bit := uint64(1) << s.slot
			for _, h := range s.hashes {
				if e, ok := ix.blocks[h]; ok && e.spec&bit != 0 {
					e.spec &^= bit
					ix.store(h, e)
				}
			}
		}
		ix.specs[n] = speculation{}
		n++
	}
	if n > 0 {
		ix.specs = ix.specs[n:]
	}
}

// PodInfo is what the index knows of one pod.
type PodInfo struct {
	Slot     int  `json:"slot"`
	Synced   bool `json:"synced"`
	Blocks   int  `json:"blocks"`   // confirmed blocks
	Capacity int  `json:"capacity"` // blocks, 0 = unknown
}

// Pod returns what the index knows of a pod.
func (ix *Index) Pod(name string) (PodInfo, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	p, ok := ix.pods[name]
	if !ok {
		return PodInfo{}, false
	}
	return PodInfo{Slot: p.slot, Synced: p.synced, Blocks: p.blocks, Capacity: p.capacity}, true
}

// Confirmed returns each pod's confirmed blocks, sorted: the part of the
// index that is a function of the event streams alone.
func (ix *Index) Confirmed() map[string][]uint64 {
	return ix.bySlot(func(e entry) uint64 { return e.held })
}

// Evicted returns, per pod, the blocks its engine evicted that the index
// remembers, sorted. Like Confirmed, it is a function of each pod's events.
func (ix *Index) Evicted() map[string][]uint64 {
	return ix.bySlot(func(e entry) uint64 { return e.was })
}

func (ix *Index) bySlot(set func(entry) uint64) map[string][]uint64 {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	out := make(map[string][]uint64, len(ix.pods))
	for name := range ix.pods {
		out[name] = []uint64{}
	}
	for h, e := range ix.blocks {
		for held := set(e); held != 0; held &= held - 1 {
			name := ix.slots[bits.TrailingZeros64(held)].name
			out[name] = append(out[name], h)
		}
	}
	for _, hs := range out {
		slices.Sort(hs)
	}
	return out
}
