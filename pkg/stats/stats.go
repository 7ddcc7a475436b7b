package stats

import "time"

// Path is where a queue-proxy serves its stats stream (WebSocket).
const Path = "/kvasir/stats"

// Message types.
const (
	TypeStat = "stat"
	TypeKV   = "kv"
)

// Message is the envelope of everything sent on the stats stream.
type Message struct {
	Type string   `json:"type"`
	Stat *Stat    `json:"stat,omitempty"`
	KV   *KVEvent `json:"kv,omitempty"`
}

// KVEvent is a change to the set of prompt blocks a queue-proxy believes its
// engine holds in its prefix cache. Blocks are the chained hashes of
// pkg/prompt (salted per LoRA adapter) at BlockSize tokens a block.
//
// The first KV event on every connection is a snapshot (Reset, Added = the
// whole set); later ones are deltas in Seq order. A subscriber that sees a
// gap in Seq, or a new connection, must drop what it had and wait for the
// next snapshot, which is what the re-dial of Subscribe does.
type KVEvent struct {
	Pod       string   `json:"pod"`
	BlockSize int      `json:"blockSize"`
	Capacity  int      `json:"capacity"` // blocks the engine's cache holds at most; 0 = unknown
	Seq       uint64   `json:"seq"`
	Reset     bool     `json:"reset,omitempty"`
	Added     []uint64 `json:"added,omitempty"`
	Removed   []uint64 `json:"removed,omitempty"`
}

// Stat is one report of a queue-proxy about its pod, sent at least once a second.
// Counters are cumulative since the queue-proxy started (subscribers take
// differences); gauges are the value at Time.
type Stat struct {
	Pod  string    `json:"pod"`
	Time time.Time `json:"time"`

	// Proxy state.
	Ready    bool `json:"ready"`
	Draining bool `json:"draining"`
	InFlight int  `json:"inFlight"` // requests being proxied to the engine now
	Queued   int  `json:"queued"`   // requests waiting for the concurrency limit

	// Cumulative request accounting measured by the queue-proxy.
	Requests         uint64  `json:"requests"`
	Errors           uint64  `json:"errors"`
	PromptTokens     uint64  `json:"promptTokens"`
	CachedTokens     uint64  `json:"cachedTokens"`
	CompletionTokens uint64  `json:"completionTokens"`
	TTFTSecondsSum   float64 `json:"ttftSecondsSum"`
	TTFTCount        uint64  `json:"ttftCount"`
	ITLSecondsSum    float64 `json:"itlSecondsSum"`
	ITLCount         uint64  `json:"itlCount"`

	// Engine state scraped from its /metrics (vLLM or SGLang names).
	Engine EngineStat `json:"engine"`
}

// EngineStat is what the engine itself reports.
type EngineStat struct {
	Scraped           bool     `json:"scraped"` // false when the last scrape failed or found nothing
	Running           float64  `json:"running"`
	Waiting           float64  `json:"waiting"`
	KVCacheUsage      float64  `json:"kvCacheUsage"` // 0..1
	BlockSize         int      `json:"blockSize,omitempty"`
	NumGPUBlocks      int      `json:"numGpuBlocks,omitempty"`
	PrefixCacheHits   float64  `json:"prefixCacheHits"`
	PrefixCacheQuery  float64  `json:"prefixCacheQueries"`
	PrefixCacheHitPct float64  `json:"prefixCacheHitRate,omitempty"` // SGLang reports a rate directly
	LoRAAdapters      []string `json:"loraAdapters,omitempty"`
	// Models are the engine's model cards, from its GET /v1/models: the
	// base model and its LoRA adapters. Within the bounds of BoundModelCards;
	// the last list read stays while the engine does not answer one (none
	// when it never did: a custom engine without the path). Never modified
	// once reported: a new list is a new slice.
	Models []ModelCard `json:"models,omitempty"`
}

// ModelCard is what an engine says of one name it serves in its OpenAI
// model list (vLLM's ModelCard, SGLang's and the simulator's alike), trimmed
// to what an activator adds to its own /v1/models.
type ModelCard struct {
	ID          string `json:"id"`                    // the name the engine serves
	Root        string `json:"root,omitempty"`        // the model's path, or the adapter's
	Parent      string `json:"parent,omitempty"`      // a LoRA adapter's base model, as the engine names it
	OwnedBy     string `json:"ownedBy,omitempty"`     // "vllm", "sglang", ...
	MaxModelLen int    `json:"maxModelLen,omitempty"` // context length in tokens (base models); 0 = unknown
}

// Bounds of the model cards of one Stat (BoundModelCards).
const (
	// MaxModelCards is the most cards a Stat carries.
	MaxModelCards = 512
	// MaxModelCardString is the longest string of a card, in bytes.
	MaxModelCardString = 1 << 10
	// MaxModelCardBytes bounds the strings of all the cards of a Stat
	// together, so that a stat stays small (it is sent every second).
	MaxModelCardBytes = 64 << 10
	// MaxModelLen is the largest context length a card may carry.
	MaxModelLen = 1<<31 - 1
)

// BoundModelCards returns the cards within the bounds, in their order: a
// card without an ID, with a string longer than MaxModelCardString, or
// naming an ID already seen is dropped; a MaxModelLen outside
// 0..MaxModelLen reads as 0 (unknown); the list ends before the card that
// would make it longer than MaxModelCards cards or MaxModelCardBytes bytes
// of strings. The result is a new slice (nil for none); cards is not
// modified. Bounding a bounded list changes nothing.
func BoundModelCards(cards []ModelCard) []ModelCard {
	if len(cards) == 0 {
		return nil
	}
	var (
		out   []ModelCard
		bytes int
		seen  = make(map[string]struct{}, min(len(cards), MaxModelCards))
	)
	for _, c := range cards {
		if _, dup := seen[c.ID]; dup || c.ID == "" || len(c.ID) > MaxModelCardString || len(c.Root) > MaxModelCardString ||
			len(c.Parent) > MaxModelCardString || len(c.OwnedBy) > MaxModelCardString {
			continue
		}
		size := len(c.ID) + len(c.Root) + len(c.Parent) + len(c.OwnedBy)
		if len(out) == MaxModelCards || bytes+size > MaxModelCardBytes {
			break
		}
		if c.MaxModelLen < 0 || c.MaxModelLen > MaxModelLen {
			c.MaxModelLen = 0
		}
		seen[c.ID] = struct{}{}
		bytes += size
		out = append(out, c)
	}
	return out
}
