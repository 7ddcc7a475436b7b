package sim

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Finish reasons, as vLLM reports them.
const (
	reasonStop   = "stop"
	reasonLength = "length"
	reasonAbort  = "abort"
)

// errStopped is the error of sequences the engine dropped on shutdown.
var errStopped = errors.New("the engine is shutting down")

// minSleep is the shortest real sleep the scheduler takes. A step ending
// sooner than this is completed at once, so at high time scales several
// simulated steps run per real sleep; the virtual clock keeps the average
// rate exact and tokens are never more than minSleep early.
const minSleep = 500 * time.Microsecond

// kvXfer is a sequence's part in disaggregated prefill/decode, set by the
// request's kv_transfer_params (vLLM's NixlConnector protocol).
type kvXfer uint8

const (
	xferNone kvXfer = iota
	// xferSend (do_remote_decode): prefill here for a decode engine; the
	// blocks holding the prompt are reported when the sequence ends.
	xferSend
	// xferRecv (do_remote_prefill): receive the KV of the prompt tokens not
	// cached here from a prefill engine instead of computing them.
	xferRecv
)

// seq is one request's sequence. The handler fills the first group and then
// only reads it; the scheduler goroutine owns the last group.
type seq struct {
	arrival    time.Time
	promptLen  int
	maxOut     int // tokens to generate; 0 for a prefill-only (embedding) request
	hashes     []uint64
	tokenIDs   []uint32 // of the prompt's full blocks, for KV events (nil when off)
	lora       string
	stream     bool
	stopReason string // reason when maxOut tokens were generated
	xfer       kvXfer

	// Shared with the handler: tokens counts the tokens produced so far and
	// notify (streams only, capacity 1) wakes the handler when it grows;
	// done is closed when the sequence ends, after cached, reason and err
	// are final. cancelled is set by the handler when it gives up.
	// sentBlocks (xferSend) are the blocks the sequence held when it ended.
	notify     chan struct{}
	done       chan struct{}
	tokens     atomic.Int64
	cancelled  atomic.Bool
	cached     int
	reason     string
	err        error
	sentBlocks []int32

	arrivalSim time.Duration
	lastSim    time.Duration
	prefilled  int // prompt tokens computed (cached ones included)
	generated  int
	chunk      int // prompt tokens scheduled in the current step
	blocks     []int32
	registered int           // leading blocks registered in the prefix cache
	reserved   int           // blocks reserved for the sequence's future growth
	recvEnd    time.Duration // xferRecv: when its KV transfer completes
	admitted   bool          // joined the running batch
	finished   bool
}

func newSeq(promptLen, maxOut int, stream bool) *seq {
	q := &seq{arrival: time.Now(), promptLen: promptLen, maxOut: maxOut, stream: stream, stopReason: reasonStop, done: make(chan struct{})}
	if stream {
		q.notify = make(chan struct{}, 1)
	}
	return q
}

func (q *seq) isDone() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// engineQuery is a question to the scheduler goroutine, which answers it
// between steps or while it sleeps, never in the middle of a step.
type engineQuery interface {
	answer(s *scheduler)
}

// prefixQuery asks the scheduler goroutine how many leading hashes are
// cached; the answer goes to reply (capacity 1).
type prefixQuery struct {
	hashes []uint64
	reply  chan int
}

// scheduler is the simulated engine: a continuous-batching loop over a
// waiting queue and a running batch, with a paged KV cache and a virtual
// clock. Sequences receiving their KV from a prefill engine wait outside the
// batch (receiving), then queue for it ahead of new work (landed).
// Everything below mu is owned by the goroutine in run.
type scheduler struct {
	log       *slog.Logger
	m         *metrics
	kv        *kvCache
	bs        int
	maxSeqs   int
	budget    int
	phys      Physics
	par       Parallel // the step's speed and, with data, the capacity
	zero      bool
	scale     float64
	loraOn    bool
	maxLoRAs  int
	cancelled atomic.Uint64 // bumped by handlers that cancel a sequence
	wake      chan struct{}
	queries   chan engineQuery // prefix-cache lookups and resets, answered by run
	quit      chan struct{}    // closed when the engine has stopped

	mu       sync.Mutex
	incoming []*seq
	stopped  bool

	start       time.Time
	vnow        time.Duration // simulated time since start
	seenCancels uint64
	drained     []*seq
	waiting     []*seq
	whead       int
	running     []*seq
	receiving   []*seq // xferRecv sequences holding blocks while their KV arrives
	landed      []*seq // xferRecv sequences whose KV arrived, waiting for the batch
	resync      bool   // the clock stopped while idle: move it to the present
	reserved    int
	decodes     []*seq
	prefills    []*seq
	skipped     []*seq
	runLoRA     map[string]int
	waitLoRA    map[string]int
	loraDirty   bool
	timer       *time.Timer
	ev          kvEvents
}

func newScheduler(cfg Config, m *metrics, log *slog.Logger) *scheduler {
	s := &scheduler{
		log:      log,
		m:        m,
		kv:       newKVCache(cfg.engineKVBlocks()),
		bs:       cfg.BlockSize,
		maxSeqs:  cfg.MaxNumSeqs * cfg.Parallel.data(),
		budget:   cfg.MaxNumBatchedTokens * cfg.Parallel.data(),
		par:      cfg.Parallel,
		phys:     cfg.Physics,
		zero:     cfg.ZeroLatency,
		scale:    cfg.TimeScale,
		loraOn:   cfg.LoRAEnabled(),
		maxLoRAs: cfg.MaxLoRAs,
		wake:     make(chan struct{}, 1),
		queries:  make(chan engineQuery),
		quit:     make(chan struct{}),
		runLoRA:  map[string]int{},
		waitLoRA: map[string]int{},
	}
	if s.zero {
		s.phys = Physics{}
	}
	if cfg.KVEventsEndpoint != "" {
		s.ev.init(s.bs, m.kvEventsDropped, log)
		s.kv.onEvict = s.ev.removed
	}
	return s
}

// submit hands a sequence to the engine.
func (s *scheduler) submit(q *seq) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return errStopped
	}
	s.incoming = append(s.incoming, q)
	s.mu.Unlock()
	s.poke()
	return nil
}

// prefixMatch returns how many leading hashes the KV cache holds right now.
// The scheduler goroutine answers (between steps or while it sleeps); the
// lookup does not change the cache, not even its LRU order.
func (s *scheduler) prefixMatch(ctx context.Context, hashes []uint64) (int, error) {
	q := prefixQuery{hashes: hashes, reply: make(chan int, 1)}
	select {
	case s.queries <- q:
	case <-s.quit:
		return 0, errStopped
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return <-q.reply, nil // answered at once by the receiver
}

func (q prefixQuery) answer(s *scheduler) {
	hits, _ := s.kv.match(q.hashes, len(q.hashes))
	q.reply <- hits
}

// cancel asks the engine to drop a sequence at its next step.
func (s *scheduler) cancel(q *seq) {
	if q.cancelled.Swap(true) {
		return
	}
	s.cancelled.Add(1)
	s.poke()
}

func (s *scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *scheduler) simSince(t time.Time) time.Duration {
	return time.Duration(float64(t.Sub(s.start)) * s.scale)
}

func (s *scheduler) realAt(sim time.Duration) time.Time {
	return s.start.Add(time.Duration(float64(sim) / s.scale))
}

// run is the engine loop. It returns when ctx is done, failing every
// sequence still queued or running.
func (s *scheduler) run(ctx context.Context, start time.Time) {
	s.start = start
	s.timer = time.NewTimer(time.Hour)
	s.timer.Stop()
	defer s.shutdown()
	s.resync = true
	for {
		s.collect()
		if ctx.Err() != nil {
			return
		}
		if s.resync || s.zero {
			// The clock stops while the engine idles; with zero latency it
			// follows real time, so latencies report real processing time.
			s.vnow = max(s.vnow, s.simSince(time.Now()))
			s.resync = false
		}
		s.land()
		if s.hasWork() {
			if dur, ok := s.plan(); ok {
				s.ev.flush() // the evictions of the step's allocations
				end := s.vnow + dur
				if !s.sleepUntil(ctx, end) {
					return
				}
				s.vnow = end
				s.complete()
				s.ev.flush()
				s.publishGauges()
				continue
			}
			if len(s.receiving) == 0 {
				// Unreachable with a valid Config (an empty engine can always
				// admit the head of the queue); wait for a change rather than spin.
				s.log.Error("scheduler has waiting work it cannot schedule", "waiting", s.numWaiting())
			}
		}
		// Nothing to compute: wait for new work or the next KV transfer.
		s.ev.flush()
		s.publishGauges()
		if !s.await(ctx) {
			return
		}
	}
}

// hasWork reports whether there is anything a step could compute.
func (s *scheduler) hasWork() bool {
	return len(s.running) > 0 || s.numWaiting() > 0 || len(s.landed) > 0
}

// await blocks until new work is submitted or, with KV transfers in
// flight, until the first of them completes, answering prefix queries
// meanwhile. It returns false when ctx is done.
func (s *scheduler) await(ctx context.Context) bool {
	var timeout <-chan time.Time
	var next time.Duration
	if len(s.receiving) > 0 {
		next = s.receiving[0].recvEnd
		for _, q := range s.receiving[1:] {
			next = min(next, q.recvEnd)
		}
		d := time.Until(s.realAt(next))
		if d < minSleep {
			s.vnow = max(s.vnow, next)
			return ctx.Err() == nil
		}
		s.timer.Reset(d)
		timeout = s.timer.C
	}
	for {
		select {
		case <-ctx.Done():
			s.timer.Stop()
			return false
		case <-s.wake:
			s.timer.Stop()
			s.resync = true
			return true
		case <-timeout:
			s.vnow = max(s.vnow, next)
			return true
		case q := <-s.queries:
			q.answer(s)
		}
	}
}

// sleepUntil waits until the real time of the simulated instant end; it
// does not sleep when that is less than minSleep away (or past: the loop is
// behind and catches up without drift). It answers prefix queries meanwhile.
func (s *scheduler) sleepUntil(ctx context.Context, end time.Duration) bool {
	d := time.Until(s.realAt(end))
	if d < minSleep {
		return ctx.Err() == nil
	}
	s.timer.Reset(d)
	for {
		select {
		case <-s.timer.C:
			return true
		case <-ctx.Done():
			s.timer.Stop()
			return false
		case q := <-s.queries:
			q.answer(s)
		}
	}
}

// collect moves submitted sequences to the waiting queue and drops the
// cancelled ones.
func (s *scheduler) collect() {
	for answered := false; !answered; {
		select {
		case q := <-s.queries:
			q.answer(s)
		default:
			answered = true
		}
	}
	s.mu.Lock()
	batch := s.incoming
	s.incoming = s.drained[:0]
	s.mu.Unlock()
	for i, q := range batch {
		batch[i] = nil
		q.arrivalSim = s.simSince(q.arrival)
		s.waiting = append(s.waiting, q)
		if q.lora != "" {
			s.waitLoRA[q.lora]++
			s.loraDirty = true
		}
	}
	s.drained = batch

	if n := s.cancelled.Load(); n != s.seenCancels {
		s.seenCancels = n
		for _, q := range s.running {
			if q.cancelled.Load() {
				s.finish(q, reasonAbort)
			}
		}
		s.running = slices.DeleteFunc(s.running, (*seq).isFinished)
		for _, list := range []*[]*seq{&s.receiving, &s.landed} {
			for _, q := range *list {
				if q.cancelled.Load() {
					s.finish(q, reasonAbort)
				}
			}
			*list = slices.DeleteFunc(*list, (*seq).isFinished)
		}
		w := s.waiting[s.whead:]
		for _, q := range w {
			if q.cancelled.Load() {
				s.finish(q, reasonAbort)
			}
		}
		kept := slices.DeleteFunc(w, (*seq).isFinished)
		s.waiting = s.waiting[:s.whead+len(kept)]
	}
	if s.whead > 0 && s.whead >= len(s.waiting)/2 {
		n := copy(s.waiting, s.waiting[s.whead:])
		clear(s.waiting[n:])
		s.waiting = s.waiting[:n]
		s.whead = 0
	}
}

func (q *seq) isFinished() bool { return q.finished }

func (s *scheduler) numWaiting() int { return len(s.waiting) - s.whead }

// plan builds the next step: every decoding sequence takes one token of the
// budget, the rest goes to prompt chunks of the prefilling sequences in
// arrival order, then to newly admitted ones. It returns the step's
// simulated duration.
func (s *scheduler) plan() (time.Duration, bool) {
	s.decodes = s.decodes[:0]
	s.prefills = s.prefills[:0]
	budget := s.budget
	for _, q := range s.running {
		if q.prefilled >= q.promptLen {
			s.grow(q)
			s.decodes = append(s.decodes, q)
			budget--
		}
	}
	prefill := 0
	for _, q := range s.running {
		if budget == 0 {
			break
		}
		if q.prefilled < q.promptLen {
			q.chunk = min(q.promptLen-q.prefilled, budget)
			budget -= q.chunk
			prefill += q.chunk
			s.prefills = append(s.prefills, q)
		}
	}
	prefill += s.admit(budget)

	n := len(s.decodes) + len(s.prefills)
	if n == 0 {
		return 0, false
	}
	return s.par.stepDuration(s.phys, n, len(s.decodes), prefill), true
}

// admit moves sequences to the running batch while the budget, the batch
// size and the KV cache allow: first those whose KV transfer has landed,
// then the waiting queue, first come first served. A sequence whose LoRA
// adapter would exceed --max-loras is skipped (it keeps its place); one that
// does not fit in the KV cache stops admission. A sequence that receives its
// KV from a prefill engine takes its blocks and leaves the queue, but joins
// the batch only once the transfer has landed (vLLM's
// WAITING_FOR_REMOTE_KVS). It returns the prompt tokens to compute for the
// admitted ones.
func (s *scheduler) admit(budget int) int {
	scheduled := 0
	if len(s.landed) > 0 {
		kept := s.landed[:0]
		for _, q := range s.landed {
			if budget == 0 || len(s.running) >= s.maxSeqs || !s.loraFits(q) {
				kept = append(kept, q)
				continue
			}
			// Only the last prompt token is left, computed at the cost of a
			// decoding sequence: no prefill tokens for the step's duration.
			s.join(q)
			q.chunk = q.promptLen - q.prefilled
			budget -= q.chunk
			s.prefills = append(s.prefills, q)
		}
		clear(s.landed[len(kept):])
		s.landed = kept
	}
	s.skipped = s.skipped[:0]
	i := s.whead
	for ; i < len(s.waiting) && budget > 0 && len(s.running) < s.maxSeqs; i++ {
		q := s.waiting[i]
		if !s.loraFits(q) {
			s.skipped = append(s.skipped, q)
			continue
		}
		if !s.allocate(q) {
			break
		}
		if q.xfer == xferRecv {
			q.recvEnd = s.vnow + s.phys.KVTransferOverhead + time.Duration(q.promptLen-q.cached)*s.phys.KVTransferPerToken
			s.receiving = append(s.receiving, q)
			continue
		}
		s.join(q)
		q.chunk = min(q.promptLen-q.prefilled, budget)
		budget -= q.chunk
		scheduled += q.chunk
		s.prefills = append(s.prefills, q)
	}
	// Admitted sequences leave the queue; skipped ones go back, in order,
	// right before the first one not looked at.
	k := i - len(s.skipped)
	copy(s.waiting[k:i], s.skipped)
	clear(s.waiting[s.whead:k])
	clear(s.skipped)
	s.whead = k
	return scheduled
}

// loraFits reports whether q's adapter, if any, is running or fits in
// --max-loras.
func (s *scheduler) loraFits(q *seq) bool {
	return q.lora == "" || s.runLoRA[q.lora] > 0 || len(s.runLoRA) < s.maxLoRAs
}

// allocate gives q its KV blocks if the cache can hold it: its cached
// prefix is reused, blocks are taken for the rest of the prompt, and the
// blocks its output will need are reserved (so a running sequence never has
// to be preempted).
func (s *scheduler) allocate(q *seq) bool {
	maxHit := (q.promptLen - 1) / s.bs // a fully cached prompt recomputes its last block
	hits, idle := s.kv.match(q.hashes, maxHit)
	promptBlocks := ceilDiv(q.promptLen, s.bs)
	total := max(promptBlocks, ceilDiv(q.promptLen+q.maxOut-1, s.bs))
	fresh := promptBlocks - hits
	reserve := total - promptBlocks
	if s.kv.free()-idle-s.reserved < fresh+reserve {
		return false
	}
	q.blocks = make([]int32, 0, total)
	for _, h := range q.hashes[:hits] {
		q.blocks = append(q.blocks, s.kv.take(h))
	}
	for range fresh {
		q.blocks = append(q.blocks, s.kv.alloc())
	}
	q.reserved = reserve
	s.reserved += reserve
	q.cached = hits * s.bs
	q.prefilled = q.cached
	q.registered = hits
	s.m.prefixQueries.Add(float64(q.promptLen))
	s.m.prefixHits.Add(float64(q.cached))
	s.m.queueTime.Observe(seconds(s.vnow - q.arrivalSim))
	return true
}

// join adds q, which holds its blocks, to the running batch.
func (s *scheduler) join(q *seq) {
	q.admitted = true
	s.running = append(s.running, q)
	if q.lora != "" {
		s.waitLoRA[q.lora]--
		if s.waitLoRA[q.lora] == 0 {
			delete(s.waitLoRA, q.lora)
		}
		s.runLoRA[q.lora]++
		s.loraDirty = true
	}
}

// land completes the KV transfers due by now: the received prompt blocks
// become findable in the prefix cache and the sequence queues for the batch
// with only its last prompt token to compute (vLLM sets num_computed_tokens
// to the prompt length - 1 once the KV has arrived).
func (s *scheduler) land() {
	if len(s.receiving) == 0 {
		return
	}
	kept := s.receiving[:0]
	for _, q := range s.receiving {
		if q.recvEnd > s.vnow {
			kept = append(kept, q)
			continue
		}
		q.prefilled = q.promptLen - 1
		s.register(q)
		s.landed = append(s.landed, q)
	}
	clear(s.receiving[len(kept):])
	s.receiving = kept
}

// grow gives a decoding sequence the blocks its next step needs, out of its
// reservation.
func (s *scheduler) grow(q *seq) {
	need := ceilDiv(q.promptLen+q.generated, s.bs)
	for len(q.blocks) < need && q.reserved > 0 {
		id := s.kv.alloc()
		if id < 0 {
			s.log.Error("KV cache has no free block for a reservation") // invariant broken
			return
		}
		q.blocks = append(q.blocks, id)
		q.reserved--
		s.reserved--
	}
}

// complete applies the step that just ended at s.vnow: decoding sequences
// and those whose prefill completed emit a token; finished ones leave.
func (s *scheduler) complete() {
	now := s.vnow
	generated := 0
	for _, q := range s.decodes {
		q.generated++
		generated++
		s.m.itl.Observe(seconds(now - q.lastSim))
		q.lastSim = now
		s.publish(q)
		if q.generated >= q.maxOut {
			s.finish(q, q.stopReason)
		}
	}
	for _, q := range s.prefills {
		q.prefilled += q.chunk
		q.chunk = 0
		s.register(q)
		if q.prefilled < q.promptLen {
			continue
		}
		s.m.promptTokens.Add(float64(q.promptLen))
		if q.maxOut == 0 {
			s.finish(q, reasonStop)
			continue
		}
		q.generated = 1
		generated++
		s.m.ttft.Observe(seconds(now - q.arrivalSim))
		q.lastSim = now
		s.publish(q)
		if q.maxOut == 1 {
			s.finish(q, q.stopReason)
		}
	}
	s.m.generationTokens.Add(float64(generated))
	s.running = slices.DeleteFunc(s.running, (*seq).isFinished)
}

// register makes the prompt blocks q has fully computed findable.
func (s *scheduler) register(q *seq) {
	full := min(q.prefilled/s.bs, len(q.hashes))
	for ; q.registered < full; q.registered++ {
		if s.kv.register(q.blocks[q.registered], q.hashes[q.registered]) {
			s.ev.stored(q, q.registered)
		}
	}
}

func (s *scheduler) publish(q *seq) {
	q.tokens.Store(int64(q.generated))
	if q.notify != nil {
		select {
		case q.notify <- struct{}{}:
		default:
		}
	}
}

// finish ends q: its blocks are released (full prompt blocks stay cached),
// its reservation returned, and its handler woken.
func (s *scheduler) finish(q *seq, reason string) {
	if q.finished {
		return
	}
	if q.xfer == xferSend && reason != reasonAbort {
		q.sentBlocks = slices.Clone(q.blocks)
	}
	s.kv.release(q.blocks)
	q.blocks = nil
	s.reserved -= q.reserved
	q.reserved = 0
	q.finished = true
	q.reason = reason
	if q.lora != "" {
		counts := s.waitLoRA
		if q.admitted {
			counts = s.runLoRA
		}
		counts[q.lora]--
		if counts[q.lora] <= 0 {
			delete(counts, q.lora)
		}
		s.loraDirty = true
	}
	if c := s.m.success[reason]; c != nil {
		c.Inc()
	}
	if reason != reasonAbort {
		s.m.e2e.Observe(seconds(s.vnow - q.arrivalSim))
	}
	close(q.done)
}

func (s *scheduler) publishGauges() {
	s.m.running.Set(float64(len(s.running)))
	// As in vLLM, sequences waiting for their KV count as waiting.
	s.m.waiting.Set(float64(s.numWaiting() + len(s.receiving) + len(s.landed)))
	usage := float64(s.kv.used()) / float64(s.kv.numBlocks())
	s.m.kvUsage.Set(usage)
	s.m.gpuUsage.Set(usage)
	if s.loraOn && s.loraDirty {
		s.loraDirty = false
		s.m.setLoRAInfo(joinKeys(s.runLoRA), joinKeys(s.waitLoRA))
	}
}

// shutdown fails every sequence still in the engine and refuses new ones.
func (s *scheduler) shutdown() {
	s.mu.Lock()
	s.stopped = true
	batch := s.incoming
	s.incoming = nil
	s.mu.Unlock()
	for _, q := range batch {
		q.err = errStopped
		s.finish(q, reasonAbort)
	}
	for _, q := range s.waiting[s.whead:] {
		q.err = errStopped
		s.finish(q, reasonAbort)
	}
	for _, list := range [][]*seq{s.running, s.receiving, s.landed} {
		for _, q := range list {
			q.err = errStopped
			s.finish(q, reasonAbort)
		}
	}
	s.waiting, s.whead, s.running, s.receiving, s.landed = nil, 0, nil, nil, nil
	s.publishGauges()
	close(s.quit)
}

func joinKeys(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func seconds(d time.Duration) float64 { return max(d, 0).Seconds() }
