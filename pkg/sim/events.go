package sim

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// KV-cache events (--kv-events-endpoint) report, in vLLM's format, exactly
// what changes in the prefix cache's index: BlockStored when a prompt block
// becomes findable, BlockRemoved when an allocation evicts one, and
// AllBlocksCleared when /reset_prefix_cache empties the cache. The
// scheduler goroutine collects them in order as they happen and hands them
// over, through a bounded channel, to a goroutine of their own that
// publishes them; it never waits for it. It hands over what a step changed
// when the step is planned (evictions by its allocations, blocks received
// from a prefill engine) and when it ends (blocks its prefill computed), so
// that whenever it answers a query (/sim/prefix-match, a reset) everything
// it changed before is on its way.

// kvEventQueue is how many batches wait for the publishing goroutine at
// most.
const kvEventQueue = 1024

// kvBatch is what one flush hands to the publishing goroutine.
type kvBatch struct {
	// lost is the number of batches the scheduler dropped right before this
	// one: the publisher skips as many sequence numbers, so subscribers see
	// the gap.
	lost   uint64
	events []kvevents.Event
}

// kvEvents collects the scheduler's KV events. It is owned by the scheduler
// goroutine; the zero value is off and ignores everything.
type kvEvents struct {
	out        chan kvBatch // nil when off
	bs         int
	pending    []kvevents.Event
	maxPending int    // events kept while out is full; beyond, they are dropped
	lost       uint64 // batches dropped since the last one sent
	sent       uint64 // batches handed to out
	dropped    prometheus.Counter
	log        *slog.Logger

	// The last pending event is a BlockStored of storedSeq's blocks
	// storedFirst.. that the next block, storedNext, may extend.
	storedSeq               *seq
	storedFirst, storedNext int
}

func (e *kvEvents) init(blockSize int, dropped prometheus.Counter, log *slog.Logger) {
	e.out = make(chan kvBatch, kvEventQueue)
	e.bs = blockSize
	e.maxPending = kvevents.MaxEvents
	e.dropped = dropped
	e.log = log
}

// stored notes that block i of q became findable under q.hashes[i].
// Consecutive blocks of one sequence make one event.
func (e *kvEvents) stored(q *seq, i int) {
	if e.out == nil {
		return
	}
	hi := (i + 1) * e.bs
	if hi > len(q.tokenIDs) { // a sequence without token ids: never for a prompt
		e.log.Error("KV events: a registered block has no token ids", "block", i)
		return
	}
	h := kvevents.IntHash(q.hashes[i])
	if n := len(e.pending); n > 0 && e.storedSeq == q && e.storedNext == i {
		if ev, ok := e.pending[n-1].(kvevents.BlockStored); ok &&
			len(ev.Hashes) < kvevents.MaxBlocks && hi-e.storedFirst*e.bs <= kvevents.MaxTokens {
			ev.Hashes = append(ev.Hashes, h)
			ev.TokenIDs = q.tokenIDs[e.storedFirst*e.bs : hi : hi]
			e.pending[n-1] = ev
			e.storedNext++
			return
		}
	}
	ev := kvevents.BlockStored{
		Hashes:    []kvevents.BlockHash{h},
		TokenIDs:  q.tokenIDs[i*e.bs : hi : hi], // shared, never written: q.tokenIDs is final
		BlockSize: e.bs,
		LoRAName:  q.lora,
		Medium:    "GPU",
	}
	if i > 0 {
		parent := kvevents.IntHash(q.hashes[i-1])
		ev.Parent = &parent
	}
	e.pending = append(e.pending, ev)
	e.storedSeq, e.storedFirst, e.storedNext = q, i, i+1
}

// removed notes that hash h left the index (its block was reused).
// Consecutive removals make one event.
func (e *kvEvents) removed(h uint64) {
	if e.out == nil {
		return
	}
	if n := len(e.pending); n > 0 {
		if ev, ok := e.pending[n-1].(kvevents.BlockRemoved); ok && len(ev.Hashes) < kvevents.MaxBlocks {
			ev.Hashes = append(ev.Hashes, kvevents.IntHash(h))
			e.pending[n-1] = ev
			return
		}
	}
	e.pending = append(e.pending, kvevents.BlockRemoved{Hashes: []kvevents.BlockHash{kvevents.IntHash(h)}, Medium: "GPU"})
}

// cleared notes that the whole index was emptied.
func (e *kvEvents) cleared() {
	if e.out == nil {
		return
	}
	e.pending = append(e.pending, kvevents.AllBlocksCleared{})
}

// flush hands the pending events to the publishing goroutine as one batch.
// When its queue is full they stay pending, to go with the next flush, up
// to maxPending events; beyond, they are dropped and counted, and the next
// batch tells the publisher to leave a gap in the sequence numbers.
func (e *kvEvents) flush() {
	if len(e.pending) == 0 {
		return
	}
	select {
	case e.out <- kvBatch{lost: e.lost, events: e.pending}:
		e.pending = nil // the publishing goroutine's now
		e.lost = 0
		e.sent++
		return
	default:
	}
	if len(e.pending) < e.maxPending {
		return
	}
	n := len(e.pending)
	clear(e.pending)
	e.pending = e.pending[:0]
	e.lost++
	e.dropped.Add(float64(n))
	if e.lost&(e.lost-1) == 0 { // a power of two: never a flood of logs
		e.log.Warn("KV events dropped: the publisher does not keep up", "events", n, "batches_lost", e.lost)
	}
}

// close ends the events: the publishing goroutine drains what is queued and
// returns. It must be called once, by the scheduler goroutine's owner after
// the scheduler stopped.
func (e *kvEvents) close() {
	if e.out != nil {
		close(e.out)
	}
}

// publishKVEvents publishes the batches of in until it is closed.
func publishKVEvents(pub *kvevents.Publisher, in <-chan kvBatch, log *slog.Logger) {
	failures := uint64(0)
	for b := range in {
		if b.lost > 0 {
			pub.Skip(b.lost)
		}
		for evs := b.events; len(evs) > 0; {
			n := min(len(evs), kvevents.MaxEvents)
			if err := pub.Publish(evs[:n]...); err != nil {
				if failures++; failures&(failures-1) == 0 {
					log.Warn("KV events: publish failed", "failures", failures, "error", err)
				}
			}
			evs = evs[n:]
		}
	}
}

// resetQuery asks the scheduler goroutine to empty the prefix cache; reply
// (capacity 1) says whether it did.
type resetQuery struct{ reply chan bool }

func (q resetQuery) answer(s *scheduler) {
	ok := s.kv.reset()
	if ok {
		s.ev.cleared()
		s.ev.flush()
	}
	q.reply <- ok
}

// resetPrefixCache empties the prefix cache unless a sequence holds blocks,
// as vLLM's reset_prefix_cache does; it reports whether it did.
func (s *scheduler) resetPrefixCache(ctx context.Context) (bool, error) {
	q := resetQuery{reply: make(chan bool, 1)}
	select {
	case s.queries <- q:
	case <-s.quit:
		return false, errStopped
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return <-q.reply, nil
}

// handleResetPrefixCache serves vLLM's POST /reset_prefix_cache: every
// cached block is forgotten (AllBlocksCleared with KV events), unless
// running requests hold blocks: then, as vLLM since it reports the failure,
// 409 and nothing changes. vLLM's reset_running_requests (preempt them
// first) is not simulated.
func (s *Server) handleResetPrefixCache(w http.ResponseWriter, r *http.Request) {
	if !s.checkReady(w) {
		return
	}
	ok, err := s.sched.resetPrefixCache(r.Context())
	switch {
	case errors.Is(err, errStopped):
		openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "engine_stopped", err.Error()), time.Second)
	case err != nil: // the client has gone
	case !ok:
		openai.WriteError(w, http.StatusConflict, openai.Err(openai.TypeInvalidRequest, "prefix_cache_in_use",
			"Prefix cache reset failed: running requests hold KV blocks."), 0)
	default:
		s.log.Info("prefix cache reset")
		w.WriteHeader(http.StatusOK)
	}
}
