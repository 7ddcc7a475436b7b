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
}
