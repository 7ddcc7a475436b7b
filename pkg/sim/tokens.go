package sim

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/tokenizer"
)

// tokens is how the engine turns the canonical text of a prompt (pkg/prompt)
// into what it counts and hashes: its token count, the token ids /tokenize
// and the KV events report, and the prefix-cache keys of its full blocks.
// It is chosen once, when the Server is built (--tokenizer), and is the only
// place the simulator derives tokens from text. Both implementations are
// safe for concurrent use.
//
//   - byteTokens, the default: the deterministic tokenizer, token i being
//     bytes [4i, 4i+4) of the text. Keys are prompt.BlockHashes of the text
//     (equal to prompt.AppendTokenBlockHashes of its ids).
//   - vocabTokens (--tokenizer): a Hugging Face tokenizer.json. Keys are
//     prompt.AppendTokenBlockHashes of the ids.
//
// Keys are unsalted; callers salt them with the LoRA adapter
// (prompt.SaltHashes).
type tokens interface {
	// tokenize tokenizes text, once per request. The result refers to text
	// and may hold a pooled buffer: pass it to release when done.
	tokenize(text []byte) promptTokens
	// release returns what tokenize took from a pool; p is unusable after.
	release(p promptTokens)
	// blockHashes returns the unsalted keys of p's full blocks of blockSize
	// tokens, in a new slice (nil when there is none).
	blockHashes(p promptTokens, blockSize int) []uint64
	// appendIDs appends the ids of p's first n tokens (n <= p.n) to dst.
	appendIDs(dst []uint32, p promptTokens, n int) []uint32
	// tokenText returns the text of p's token i, for /tokenize's
	// token_strs.
	tokenText(p promptTokens, i int) []byte
}

// promptTokens is a prompt's text as tokens gives it.
type promptTokens struct {
	text []byte
	n    int       // number of tokens
	ids  []uint32  // vocabTokens: the ids of text (in *buf); nil for byteTokens
	buf  *[]uint32 // vocabTokens: the pooled buffer holding ids
}

// byteTokens is the deterministic tokenizer: four bytes a token
// (prompt.AppendTokens). Nothing it does allocates but the slices it
// returns.
type byteTokens struct{}

func (byteTokens) tokenize(text []byte) promptTokens {
	return promptTokens{text: text, n: prompt.TokenCount(text)}
}

func (byteTokens) release(promptTokens) {}

func (byteTokens) blockHashes(p promptTokens, blockSize int) []uint64 {
	return prompt.BlockHashes(p.text, blockSize)
}

func (byteTokens) appendIDs(dst []uint32, p promptTokens, n int) []uint32 {
	return prompt.AppendTokens(dst, p.text[:min(n*prompt.BytesPerToken, len(p.text))])
}

func (byteTokens) tokenText(p promptTokens, i int) []byte {
	off := i * prompt.BytesPerToken
	return p.text[off:min(off+prompt.BytesPerToken, len(p.text))]
}

// vocabTokens tokenizes with a Hugging Face tokenizer.json (--tokenizer), as
// its encode(text, add_special_tokens=False) does.
type vocabTokens struct {
	tk   *tokenizer.Tokenizer
	bufs sync.Pool // *[]uint32
}

// maxPooledIDs bounds the id buffers kept for reuse (1 MiB each).
const maxPooledIDs = 1 << 18

func newVocabTokens(tk *tokenizer.Tokenizer) *vocabTokens {
	return &vocabTokens{tk: tk, bufs: sync.Pool{New: func() any { b := make([]uint32, 0, 1024); return &b }}}
}

func (v *vocabTokens) tokenize(text []byte) promptTokens {
	buf := v.bufs.Get().(*[]uint32)
	*buf = v.tk.AppendEncode((*buf)[:0], text)
	return promptTokens{text: text, n: len(*buf), ids: *buf, buf: buf}
}

func (v *vocabTokens) release(p promptTokens) {
	if p.buf != nil && cap(*p.buf) <= maxPooledIDs {
		v.bufs.Put(p.buf)
	}
}

func (v *vocabTokens) blockHashes(p promptTokens, blockSize int) []uint64 {
	if blockSize <= 0 {
		return nil
	}
	n := len(p.ids) / blockSize
	if n == 0 {
		return nil
	}
	return prompt.AppendTokenBlockHashes(make([]uint64, 0, n), p.ids, blockSize)
}

func (v *vocabTokens) appendIDs(dst []uint32, p promptTokens, n int) []uint32 {
	return append(dst, p.ids[:n]...)
}

func (v *vocabTokens) tokenText(p promptTokens, i int) []byte {
	return v.tk.Decode(p.ids[i : i+1])
}

// loadTokens chooses the engine's tokenizer: the deterministic one when
// path is empty, else the tokenizer.json at path (or in the directory path,
// as vLLM's --tokenizer takes a model directory). The error names the flag.
func loadTokens(path string) (tokens, *tokenizer.Tokenizer, error) {
	if path == "" {
		return byteTokens{}, nil, nil
	}
	file := path
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		file = filepath.Join(path, "tokenizer.json")
	}
	tk, err := tokenizer.Load(file)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid --tokenizer %q: %w", path, err)
	}
	return newVocabTokens(tk), tk, nil
}
