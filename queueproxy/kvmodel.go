package queueproxy

import (
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/lru"
)

// kvModel is the queue-proxy's model of the prompt blocks its engine holds
// in its prefix cache: an LRU set of chained block hashes (pkg/prompt),
// bounded by the engine's capacity. Measured requests feed it (kvrequest.go)
// and every change goes to the stats subscribers as KV events, batched and
// sent at most every --kv-flush-interval (flushKV).
//
// LRU order. Every touch gives a block the next stamp of a logical clock and
// moves it to the most recent end, so the list is ordered by stamp. A
// request touches its blocks when it is sent (routers see them at once) and
// again when the engine served it: engines free a finished sequence's blocks
// into their eviction queue in reverse order, the last block first, so the
// queue is ordered by release time with the first block of a prompt the last
// to go. Both touches go last block first, so block 0 ends most recent.
//
// Settled blocks. A block is settled when its last touch came from a request
// the engine served (not from one still in flight, or one whose fate is
// unknown): only then was it certainly in the engine's cache, with a known
// place in its eviction order. The correction (kvModel.finish) relies on it.
//
// Concurrency: mu guards everything below it; the request path reads shape
// and models without it. The broadcast of a message happens under mu, and
// so does the snapshot sent to a new subscriber together with its
// registration, so that no subscriber misses or sees twice a delta.
type kvModel struct {
	log         *slog.Logger
	pod         string
	flagBS      int // --kv-block-size; 0 = the engine's
	flagCap     int // --kv-capacity-blocks; 0 = the engine's
	hub         *hub
	corrections prometheus.Counter
	blocks      atomic.Int64 // blocks in the model

	// shape is the block size and the epoch it belongs to; nil while the
	// block size is unknown.
	shape atomic.Pointer[kvShape]
	// models are the engine's served models and LoRA adapters; nil until
	// first learnt.
	models   atomic.Pointer[engineModels]
	idleOnce atomic.Bool // "not modelling: block size unknown" was logged
	warnOnce atomic.Bool // "--kv-block-size differs from the engine's" was logged

	tickets sync.Pool // *kvTicket
	texts   sync.Pool // *[]byte, prompt text buffers

	mu           sync.Mutex
	engineBS     int // last block size the engine reported
	engineBlocks int // last num_gpu_blocks the engine reported
	blockSize    int // in force; 0 = unknown
	capacity     int // reported to subscribers; 0 = unknown
	limit        int // blocks the model holds at most
	epoch        uint64
	clock        uint64 // stamp of the latest touch; stamps start at 1
	lru          *lru.List[uint64, kvBlock]
	deltas       kvDeltas
}

// kvShape is what the request path needs to hash a prompt.
type kvShape struct {
	blockSize int
	epoch     uint64
}

// kvBlock is what the model knows of one block of its LRU list.
type kvBlock struct {
	stamp   uint64
	settled bool
}

func newKVModel(cfg Config, h *hub, corrections prometheus.Counter, log *slog.Logger) *kvModel {
	m := &kvModel{
		log:         log.With(slog.String("component", "kv-model")),
		pod:         cfg.PodName,
		flagBS:      cfg.KVBlockSize,
		flagCap:     cfg.KVCapacityBlocks,
		hub:         h,
		corrections: corrections,
		lru:         lru.New[uint64, kvBlock](),
		deltas:      newKVDeltas(cfg.PodName),
	}
	m.tickets.New = func() any { return new(kvTicket) }
	m.texts.New = func() any { return new([]byte) }
	m.configure(0, 0, false)
	return m
}

// configure applies what the engine reported in a scrape (0, 0 when the
// scrape found nothing: the last known values stay) and the flags. A new
// block size, or an engine restart, empties the model.
func (m *kvModel) configure(engineBS, engineBlocks int, restarted bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if engineBS > 0 {
		m.engineBS, m.engineBlocks = engineBS, engineBlocks
	}
	bs := m.flagBS
	if bs == 0 {
		bs = m.engineBS
	} else if m.engineBS > 0 && m.engineBS != bs && !m.warnOnce.Swap(true) {
		m.log.Warn("--kv-block-size differs from the engine's block size; cached_tokens corrections may misfire",
			slog.Int("flag", bs), slog.Int("engine", m.engineBS))
	}
	capacity := m.flagCap
	if capacity == 0 && m.engineBlocks > 0 && bs > 0 {
		capacity = m.engineBlocks * m.engineBS / bs // the engine's blocks in ours
	}
	limit := capacity
	if limit == 0 {
		limit = DefaultKVModelBlocks
	}
	limit = min(limit, MaxKVCapacityBlocks)

	switch {
	case bs != m.blockSize:
		m.log.Info("KV model (re)started", slog.Int("blockSize", bs), slog.Int("previousBlockSize", m.blockSize),
			slog.Int("capacity", capacity))
		m.clearLocked(bs)
	case restarted && bs > 0:
		m.log.Info("engine restarted (its prefix cache counters went back): KV model emptied")
		m.clearLocked(bs)
	}
	if capacity != m.capacity || limit != m.limit {
		m.capacity, m.limit = capacity, limit
		m.deltas.metaChanged()
		m.evictLocked()
	}
}

// clearLocked empties the model for block size bs; pending requests of the
// old epoch are ignored when they finish.
func (m *kvModel) clearLocked(bs int) {
	m.blockSize = bs
	m.epoch++
	m.lru.Clear()
	m.deltas.clear()
	m.blocks.Store(0)
	if bs > 0 {
		m.shape.Store(&kvShape{blockSize: bs, epoch: m.epoch})
	} else {
		m.shape.Store(nil)
	}
}

// len is the number of blocks in the model.
func (m *kvModel) len() int { return int(m.blocks.Load()) }

// hashes returns the blocks of the model, least recently used first.
func (m *kvModel) hashes() []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.appendHashesLocked(make([]uint64, 0, m.lru.Len()))
}

func (m *kvModel) appendHashesLocked(dst []uint64) []uint64 {
	for h := range m.lru.All() {
		dst = append(dst, h)
	}
	return dst
}

// touchLocked makes hash the most recent block, inserting it when absent,
// with the next stamp. It returns the block's state before:
// its stamp<<1 | settled, or 0 when it was absent.
func (m *kvModel) touchLocked(hash uint64, settled bool) (prior uint64) {
	m.clock++
	b, added := m.lru.Touch(hash)
	if added {
		m.deltas.note(hash, false)
	} else {
		prior = b.stamp << 1
		if b.settled {
			prior |= 1
		}
	}
	*b = kvBlock{stamp: m.clock, settled: settled}
	return prior
}

// removeLocked drops block hash.
func (m *kvModel) removeLocked(hash uint64) {
	m.deltas.note(hash, true)
	m.lru.Remove(hash)
}

// evictLocked drops least recently used blocks beyond the limit.
func (m *kvModel) evictLocked() {
	for m.lru.Len() > m.limit {
		h, _ := m.lru.Oldest()
		m.removeLocked(h)
	}
	m.blocks.Store(int64(m.lru.Len()))
}

// flush sends the changes batched since the last message, if any.
func (m *kvModel) flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushLocked()
}

func (m *kvModel) flushLocked() {
	if msg := m.deltas.next(m, m.blockSize, m.capacity); msg != nil {
		m.hub.broadcast(msg)
	}
}

func (m *kvModel) changed() <-chan struct{} { return m.deltas.changed }

// has, appendAll and size make the model a kvSet.
func (m *kvModel) has(hash uint64) bool            { return m.lru.Contains(hash) }
func (m *kvModel) appendAll(dst []uint64) []uint64 { return m.appendHashesLocked(dst) }
func (m *kvModel) size() int                       { return m.lru.Len() }

// subscribe registers a stats subscriber on h whose first messages are
// stat and a snapshot of the model. Pending changes are flushed to the
// existing subscribers first, and the snapshot is taken and the subscriber
// registered under the lock every broadcast of the model holds, so its
// first delta is exactly the next one.
func (m *kvModel) subscribe(h *hub, kill func(), stat []byte) *subscriber {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushLocked()
	return h.subscribe(kill, stat, m.deltas.snapshot(m, m.blockSize, m.capacity))
}
