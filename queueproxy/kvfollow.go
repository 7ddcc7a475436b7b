package queueproxy

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

// kvFollower follows the engine's own KV-cache events (vLLM's ZMQ
// publisher, SGLang's, the simulator's) and streams the set of blocks the
// engine reports resident, in the routers' keys.
//
// Keys. The engine names blocks by its own hashes, which a router cannot
// compute; every BlockStored event also carries the blocks' token ids. The
// follower chains those with prompt.ChainTokens from the parent block's key
// and salts them per LoRA adapter (prompt.Salt): the keys a router computes
// from the same tokens (pkg/scheduler, with the engine's tokenizer). It
// remembers engine hash -> key for every resident block, so that removals,
// which carry only the engine's hashes, map back.
//
// Loss. A gap in the sequence numbers, a reconnection or an engine that
// restarts means events were missed: the follower empties its set (a
// snapshot with nothing in it) and learns again from the next events. A
// block stored under a parent it does not know (stored before the loss) is
// skipped and counted, as its key cannot be computed.
type kvFollower struct {
	log     *slog.Logger
	hub     *hub
	limit   int // blocks tracked at most
	events  *prometheus.CounterVec
	skipped *prometheus.CounterVec
	gaps    prometheus.Counter
	count   atomic.Int64 // resident keys

	mu        sync.Mutex
	blockSize int // of the engine's last BlockStored; 0 = none yet
	capacity  int // the engine's num_gpu_blocks; 0 = unknown
	blocks    map[kvevents.BlockHash]followed
	held      map[uint64]int32 // key -> engine blocks naming it
	deltas    kvDeltas
}

// followed is one block the engine reported stored.
type followed struct {
	chain uint64 // unsalted chained hash: the parent value of its children
	key   uint64 // chain salted by adapter: the routers' key
	refs  int32  // BlockStored minus BlockRemoved (one per medium)
}

// Reasons a block of a BlockStored event is not followed.
const (
	skipUnknownParent = "unknown_parent"
	skipMalformed     = "malformed"
	skipFull          = "full"
	// An adapter's blocks named by vLLM's deprecated lora_id alone: the
	// routers key adapters by name.
	skipLoRAIDOnly = "lora_id_only"
)

func newKVFollower(cfg Config, h *hub, m *metrics, log *slog.Logger) *kvFollower {
	return &kvFollower{
		log:     log.With(slog.String("component", "kv-events")),
		hub:     h,
		limit:   MaxKVCapacityBlocks,
		events:  m.kvEvents,
		skipped: m.kvEventsSkipped,
		gaps:    m.kvEventGaps,
		blocks:  make(map[kvevents.BlockHash]followed),
		held:    make(map[uint64]int32),
		deltas:  newKVDeltas(cfg.PodName),
	}
}

// run subscribes to the engine's events until ctx ends.
func (f *kvFollower) run(ctx context.Context, cfg Config) {
	opts := []kvevents.Option{kvevents.WithLogger(f.log), kvevents.WithGapHandler(f.gap)}
	if cfg.KVEventsBind {
		opts = append(opts, kvevents.WithBind())
	}
	sub := kvevents.NewSubscriber(cfg.KVEventsEndpoint, cfg.KVEventsTopic, f.handle, opts...)
	if err := sub.Run(ctx); err != nil { // Validate checked the endpoint
		f.log.Error("kv events: not followed", slog.Any("error", err))
	}
}

// capacityScraped applies the engine's num_gpu_blocks from a scrape; 0
// keeps the last known value.
func (f *kvFollower) capacityScraped(blocks int) {
	if blocks <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if blocks != f.capacity {
		f.capacity = blocks
		f.deltas.metaChanged()
	}
}

// restarted empties the set: the engine restarted with an empty cache.
func (f *kvFollower) restarted() {
	f.log.Info("kv events: the engine restarted; starting over")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLocked()
	f.count.Store(0)
}

// gap is called by the subscriber before the batch that shows batches were
// lost (or that the engine's count restarted).
func (f *kvFollower) gap(_ string, from, to uint64) {
	f.gaps.Inc()
	f.log.Info("kv events: sequence gap; starting over", slog.Uint64("expected", from), slog.Uint64("got", to))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLocked()
}

// handle applies one batch of the engine's events.
func (f *kvFollower) handle(b kvevents.Batch) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.First { // a new connection: what happened while there was none is unknown
		f.clearLocked()
	}
	for _, ev := range b.Events {
		switch ev := ev.(type) {
		case kvevents.BlockStored:
			f.events.WithLabelValues("stored").Inc()
			f.storedLocked(ev)
		case kvevents.BlockRemoved:
			f.events.WithLabelValues("removed").Inc()
			for _, h := range ev.Hashes {
				f.removeLocked(h)
			}
		case kvevents.AllBlocksCleared:
			f.events.WithLabelValues("cleared").Inc()
			f.clearLocked()
		}
	}
	f.count.Store(int64(len(f.held)))
}

func (f *kvFollower) storedLocked(ev kvevents.BlockStored) {
	bs := ev.BlockSize
	n := len(ev.Hashes)
	if bs <= 0 || len(ev.TokenIDs) < n*bs {
		f.skipped.WithLabelValues(skipMalformed).Add(float64(n))
		return
	}
	if ev.LoRAID != nil && ev.LoRAName == "" {
		f.skipped.WithLabelValues(skipLoRAIDOnly).Add(float64(n))
		return
	}
	if bs != f.blockSize {
		if f.blockSize != 0 {
			f.log.Info("kv events: the engine's block size changed; starting over",
				slog.Int("blockSize", bs), slog.Int("previous", f.blockSize))
		}
		f.clearLocked()
		f.blockSize = bs
	}
	var chain uint64
	if ev.Parent != nil {
		p, ok := f.blocks[*ev.Parent]
		switch {
		case ok:
			chain = p.chain
		case *ev.Parent == kvevents.IntHash(0):
			// llm-d-inference-sim sends 0, not nil, for "no parent".
		default:
			f.skipped.WithLabelValues(skipUnknownParent).Add(float64(n))
			return
		}
	}
	salt := prompt.Salt(ev.LoRAName)
	for i, h := range ev.Hashes {
		chain = prompt.ChainTokens(chain, ev.TokenIDs[i*bs:(i+1)*bs])
		b, ok := f.blocks[h]
		if !ok {
			if len(f.blocks) >= f.limit {
				f.skipped.WithLabelValues(skipFull).Add(float64(n - i))
				return
			}
			b = followed{chain: chain, key: chain ^ salt}
			if f.held[b.key] == 0 {
				f.deltas.note(b.key, false)
			}
			f.held[b.key]++
		}
		b.refs++
		f.blocks[h] = b
	}
}

func (f *kvFollower) removeLocked(h kvevents.BlockHash) {
	b, ok := f.blocks[h]
	if !ok {
		return // stored before the follower knew, or already gone
	}
	if b.refs--; b.refs > 0 {
		f.blocks[h] = b
		return
	}
	delete(f.blocks, h)
	if f.held[b.key]--; f.held[b.key] <= 0 {
		delete(f.held, b.key)
		f.deltas.note(b.key, true)
	}
}

func (f *kvFollower) clearLocked() {
	clear(f.blocks)
	clear(f.held)
	f.deltas.clear()
}

// has, appendAll and size make the follower's keys a kvSet.
func (f *kvFollower) has(key uint64) bool { return f.held[key] > 0 }
func (f *kvFollower) appendAll(dst []uint64) []uint64 {
	for k := range f.held {
		dst = append(dst, k)
	}
	return dst
}
func (f *kvFollower) size() int { return len(f.held) }

func (f *kvFollower) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if msg := f.deltas.next(f, f.blockSize, f.capacity); msg != nil {
		f.hub.broadcast(msg)
	}
}

func (f *kvFollower) subscribe(h *hub, kill func(), stat []byte) *subscriber {
	f.mu.Lock()
	defer f.mu.Unlock()
	if msg := f.deltas.next(f, f.blockSize, f.capacity); msg != nil {
		h.broadcast(msg)
	}
	return h.subscribe(kill, stat, f.deltas.snapshot(f, f.blockSize, f.capacity))
}

func (f *kvFollower) len() int { return int(f.count.Load()) }

func (f *kvFollower) changed() <-chan struct{} { return f.deltas.changed }

var (
	_ kvSource = (*kvFollower)(nil)
	_ kvSource = (*kvModel)(nil)
	_ kvSet    = (*kvFollower)(nil)
	_ kvSet    = (*kvModel)(nil)
)
