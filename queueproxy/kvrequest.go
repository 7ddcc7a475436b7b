package queueproxy

import (
	"bytes"
	"log/slog"
	"unicode/utf8"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

// maxPooledText is the largest prompt text buffer kept for reuse.
const maxPooledText = 4 << 20

// kvScaledMargin is the shortfall, in blocks, that cached_tokens scaled from
// an engine's own tokenizer must exceed to correct the model.
const kvScaledMargin = 2

// kvTicket is one measured request's part in the KV model, from prepare
// (its block hashes) through sent to finish.
type kvTicket struct {
	epoch  uint64
	bs     int
	tokens int      // prompt tokens by the canonical tokenizer
	hashes []uint64 // chained, salted block hashes of the prompt
	// prior is each block's state before the send: its stamp<<1 | settled,
	// or 0 when the model did not hold it.
	prior []uint64
	first uint64 // stamp given to the last block at the send; block i got first+n-1-i
	p     int    // leading blocks the model held before the send (its prediction)
	sent  bool
}

// kvOutcome is what the engine made of a request, as far as its cache goes.
type kvOutcome int

const (
	// kvUnknown: no response, or one cut short before any sign of work (the
	// client left, the engine died): the blocks may or may not be cached.
	kvUnknown kvOutcome = iota
	// kvServed: the engine answered 2xx and computed the prompt.
	kvServed
	// kvRejected: the engine answered an error status; the prompt never
	// entered its cache.
	kvRejected
)

// kvOutcomeOf classifies an exchange whose engine status was status (0: no
// response).
func kvOutcomeOf(status int, ex *exchange) kvOutcome {
	switch {
	case status >= 400:
		return kvRejected
	case status/100 != 2:
		return kvUnknown
	case ex.usage != nil || ex.hasTTFT || (!ex.broken && !ex.clientGone):
		return kvServed
	}
	return kvUnknown
}

// prepare renders and hashes the prompt of a measured request parsed as
// obj (chat or completions). It returns nil when the request is not
// modelled: block size unknown, a model the engine does not list, or a
// prompt the engine will reject anyway.
func (m *kvModel) prepare(obj openai.Object, chat bool) *kvTicket {
	shape := m.shape.Load()
	if shape == nil {
		if !m.idleOnce.Swap(true) {
			m.log.Debug("not modelling the KV cache yet: block size unknown " +
				"(the engine exports no vllm:cache_config_info and --kv-block-size is 0)")
		}
		return nil
	}
	adapter, ok := m.adapterOf(obj)
	if !ok {
		return nil
	}
	buf := m.texts.Get().(*[]byte)
	// The canonical rendering: for chat prompt.AppendChat of the decoded
	// "messages" (AppendRequest takes a fast path that agrees with
	// DecodeMessages), for completions prompt.AppendCompletion of "prompt".
	text, err := prompt.AppendRequest((*buf)[:0], obj, chat)
	var t *kvTicket
	if err != nil {
		m.log.Debug("not modelling a request whose prompt does not render", slog.Bool("chat", chat), slog.Any("error", err))
	} else if n := len(text) / (shape.blockSize * prompt.BytesPerToken); n > 0 {
		t = m.tickets.Get().(*kvTicket)
		t.epoch, t.bs, t.tokens, t.sent = shape.epoch, shape.blockSize, prompt.TokenCount(text), false
		t.hashes = prompt.AppendBlockHashes(t.hashes[:0], text, shape.blockSize)
		prompt.SaltHashes(t.hashes, adapter)
	}
	if cap(text) <= maxPooledText {
		*buf = text[:0]
		m.texts.Put(buf)
	}
	return t
}

// adapterOf returns the LoRA adapter whose salt the request's blocks take
// ("" for the base model), and false when the request is not modelled: its
// "model" is not a string, or the engine lists its models and this is none
// of them (the engine will answer 404, or it is an adapter loaded since the
// last scrape, whose blocks would otherwise go in unsalted).
func (m *kvModel) adapterOf(obj openai.Object) (string, bool) {
	raw, present := obj.Get("model")
	if !present || string(raw) == "null" {
		return "", true
	}
	if len(raw) < 2 || raw[0] != '"' {
		return "", false // not a string
	}
	em := m.models.Load()
	if em == nil {
		return "", true
	}
	// A name without escapes is its bytes, and looking them up allocates
	// nothing; others are decoded as encoding/json does.
	name := raw[1 : len(raw)-1]
	if bytes.IndexByte(name, '\\') >= 0 || !utf8.Valid(name) {
		s, _ := obj.String("model")
		name = []byte(s)
	}
	if _, ok := em.adapters[string(name)]; ok {
		return string(name), true
	}
	if _, ok := em.base[string(name)]; ok || !em.listed {
		return "", true
	}
	return "", false
}

// release returns t to the pool.
func (m *kvModel) release(t *kvTicket) {
	if cap(t.hashes) > maxPooledText/8 {
		return
	}
	m.tickets.Put(t)
}

// sent records that t's request goes to the engine now: its leading
// blocks held are its prediction p, and all its blocks are touched or
// inserted, last block first, evicting least recently used ones beyond
// the capacity.
func (m *kvModel) sent(t *kvTicket) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.epoch != m.epoch {
		return // the block size changed since prepare
	}
	n := len(t.hashes)
	if cap(t.prior) < n {
		t.prior = make([]uint64, n)
	}
	t.prior = t.prior[:n]
	for i := n - 1; i >= 0; i-- {
		t.prior[i] = m.touchLocked(t.hashes[i], false)
	}
	t.first = m.clock - uint64(n) + 1
	// Touching evicts nothing, so prior tells what was held before.
	t.p = 0
	for t.p < n && t.prior[t.p] != 0 {
		t.p++
	}
	t.sent = true
	m.evictLocked()
}

// finish settles t's request once its response ended, then releases t.
//
// Served with usage.prompt_tokens_details.cached_tokens: the engine found a
// = cached_tokens / blockSize leading blocks in its cache. The model
// predicted p at the send; the engine never reports more than
// (prompt_tokens-1)/blockSize blocks (a fully cached prompt recomputes its
// last token), so the expectation is e = min(p, that). If a < e, block a,
// which the model held, had been evicted. Engines evict least recently used
// blocks first, so every block the model ranked older than block a (by
// block a's place before this request touched it) was evicted before it:
// those are removed (a correction). This inference needs block a's place to
// be its place in the engine's eviction queue, so it is drawn only when
// block a was settled (last touched by a served request, see kvModel);
// otherwise block a may have been missing because the request that brought
// it was still being computed, and nothing is removed. Blocks older than
// block a that are not settled are kept as well: a request still in flight
// holds them. If a >= e the model was right or pessimistic: nothing to
// remove (the blocks were inserted at the send anyway). Then the request's
// blocks are touched again, settled, in the order the engine frees them.
//
// Rejected (the engine answered an error status): the blocks this request
// inserted, unless touched since, are removed again. Unknown: the blocks stay
// as they are, unsettled.
func (m *kvModel) finish(t *kvTicket, outcome kvOutcome, u *openai.Usage) {
	defer m.release(t)
	if !t.sent {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.epoch != m.epoch {
		return
	}
	n := len(t.hashes)
	switch outcome {
	case kvRejected:
		for i, h := range t.hashes {
			if b, ok := m.lru.Get(h); ok && t.prior[i] == 0 && b.stamp == t.first+uint64(n-1-i) {
				m.removeLocked(h)
			}
		}
	case kvServed:
		if u != nil && u.PromptTokensDetails != nil {
			m.correctLocked(t, u)
		}
		for i := n - 1; i >= 0; i-- {
			m.touchLocked(t.hashes[i], true)
		}
	}
	m.evictLocked()
}

// correctLocked applies the engine's cached_tokens to the model (see finish).
//
// The engine counts tokens with its own tokenizer. When its prompt_tokens
// equal the canonical count (the simulator), its blocks are the model's and
// the rule is exact. Otherwise (a real tokenizer) cached_tokens is scaled to
// canonical tokens and a shortfall must exceed kvScaledMargin blocks, the
// error the two block grids can make, before it counts.
func (m *kvModel) correctLocked(t *kvTicket, u *openai.Usage) {
	cached, margin := int(u.PromptTokensDetails.CachedTokens), 0
	if engineTokens := int(u.PromptTokens); engineTokens > 0 && engineTokens != t.tokens {
		cached = int(int64(cached) * int64(t.tokens) / int64(engineTokens))
		margin = kvScaledMargin
	}
	a := cached / t.bs
	expected := min(t.p, len(t.hashes), max(t.tokens-1, 0)/t.bs)
	if a+margin >= expected {
		return
	}
	prior := t.prior[a] // a < p: the model held block a
	if prior&1 == 0 {
		m.log.Debug("KV model: engine missed a block not yet settled; no correction",
			slog.Int("cachedBlocks", a), slog.Int("predicted", t.p))
		return
	}
	before := prior >> 1
	removed := 0
	for h, b := range m.lru.All() {
		if b.stamp >= before {
			break
		}
		if b.settled {
			m.removeLocked(h)
			removed++
		}
	}
	m.corrections.Inc()
	m.log.Debug("KV model corrected by cached_tokens", slog.Int("cachedBlocks", a),
		slog.Int("predicted", t.p), slog.Int("removed", removed))
}
