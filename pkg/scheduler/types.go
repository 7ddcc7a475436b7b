package scheduler

import (
	"sync"
	"sync/atomic"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// Pod is a ready replica as the scheduler sees it. The activator owns it:
// InFlight is guarded by the activator's revision lock, under which
// decisions run; Stat is replaced by the pod's stats stream at any time.
type Pod struct {
	fleet.Endpoint
	// InFlight is how many requests this activator has on the pod now.
	InFlight int
	// Slot is the pod's slot in its pool's prefix index, -1 for none.
	Slot int

	stat atomic.Pointer[stats.Stat]
}

// NewPod returns a pod with no stats and no index slot.
func NewPod(ep fleet.Endpoint) *Pod { return &Pod{Endpoint: ep, Slot: -1} }

// Stat is the pod's latest queue-proxy report, or nil before the first.
func (p *Pod) Stat() *stats.Stat { return p.stat.Load() }

// SetStat records a queue-proxy report.
func (p *Pod) SetStat(s *stats.Stat) { p.stat.Store(s) }

// Waiting is the engine's waiting queue as last reported (0 before).
func (p *Pod) Waiting() float64 {
	if s := p.stat.Load(); s != nil {
		return s.Engine.Waiting
	}
	return 0
}

// Load is what least-request balances: the requests this activator has in
// flight on the pod plus the engine's waiting queue (which also counts the
// requests of other activators).
func (p *Pod) Load() float64 { return float64(p.InFlight) + p.Waiting() }

// API kinds of a request.
const (
	APIChat        = "chat"
	APICompletions = "completions"
	APIEmbeddings  = "embeddings"
)

// Request is one request as the scheduler sees it. Derived values (the
// canonical prompt text, its block hashes) are computed on first use and
// shared by every plugin.
type Request struct {
	// Body is the request parsed once by the activator.
	Body openai.Object
	// API is APIChat, APICompletions or APIEmbeddings.
	API string
	// Adapter is the LoRA adapter the request names, "" for the base model.
	Adapter string
	// Tokens are the prompt's token ids as the engine tokenizes it, when the
	// activator knows them (a tokenizer file, or the engine's tokenization
	// endpoint, asked before routing); nil otherwise. With them, prefix
	// keys are those of the engine's KV events (prompt.AppendTokenBlockHashes).
	Tokens []uint32

	buf      *[]byte // pooled backing of text
	text     []byte
	textErr  error
	rendered bool
	hashBuf  *[]uint64
	hashes   []uint64
	hashBS   int
}

// Text returns the canonical prompt text (see pkg/prompt), rendered once.
func (r *Request) Text() ([]byte, error) {
	if !r.rendered {
		r.rendered = true
		switch r.API {
		case APIChat, APICompletions:
			r.buf = textPool.Get().(*[]byte)
			r.text, r.textErr = prompt.AppendRequest((*r.buf)[:0], r.Body, r.API == APIChat)
		default:
			r.textErr = errNoPrompt
		}
	}
	return r.text, r.textErr
}

// The pools start small (a chat prompt of a few hundred tokens fits) and
// keep what requests grew them to, up to maxPooledText and maxPooledHashes:
// a burst of concurrent requests each takes one, so their first size is
// what a burst costs (2,000 streams at once held 65 MiB at 32 KiB and 2,048
// hashes each).
var (
	textPool   = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}
	hashesPool = sync.Pool{New: func() any { h := make([]uint64, 0, 256); return &h }}
)

const (
	maxPooledText   = 256 << 10
	maxPooledHashes = 16 << 10
)

// Release returns the request's buffers to their pools; the request and
// slices it returned must not be used afterwards.
func (r *Request) Release() {
	if r.buf != nil {
		if cap(r.text) <= maxPooledText {
			*r.buf = r.text[:0]
			textPool.Put(r.buf)
		}
		r.buf, r.text = nil, nil
	}
	if r.hashBuf != nil {
		if cap(r.hashes) <= maxPooledHashes {
			*r.hashBuf = r.hashes[:0]
			hashesPool.Put(r.hashBuf)
		}
		r.hashBuf, r.hashes = nil, nil
	}
	// A read after Release fails rather than see an empty prompt.
	r.rendered, r.textErr, r.hashBS = true, errReleased, 0
}

// Hashes returns the chained block hashes of the prompt at blockSize tokens
// a block, salted by adapter; nil when the request has no prompt. They are
// computed once per block size.
func (r *Request) Hashes(blockSize int) []uint64 {
	if blockSize <= 0 {
		return nil
	}
	if r.hashBS == blockSize {
		return r.hashes
	}
	text, err := r.Text()
	if err != nil {
		return nil
	}
	if r.hashBuf == nil {
		r.hashBuf = hashesPool.Get().(*[]uint64)
		r.hashes = (*r.hashBuf)[:0]
	}
	if r.Tokens != nil {
		r.hashes = prompt.AppendTokenBlockHashes(r.hashes[:0], r.Tokens, blockSize)
	} else {
		r.hashes = prompt.AppendBlockHashes(r.hashes[:0], text, blockSize)
	}
	prompt.SaltHashes(r.hashes, r.Adapter)
	r.hashBS = blockSize
	return r.hashes
}

// PromptTokens is the prompt's length in tokens (0 without a prompt).
func (r *Request) PromptTokens() int {
	if r.Tokens != nil {
		return len(r.Tokens)
	}
	text, err := r.Text()
	if err != nil {
		return 0
	}
	return prompt.TokenCount(text)
}
