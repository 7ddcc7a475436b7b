package tokenizer

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// MaxFileSize is the largest tokenizer.json Load and LoadBytes accept.
const MaxFileSize = 64 << 20

// Tokenizer encodes text to token ids. Safe for concurrent use.
type Tokenizer struct {
	nfc bool
	// added matches the added tokens with normalized false in the raw text;
	// addedNorm those with normalized true in the normalized text.
	added, addedNorm *addedMatcher
	steps            []preStep
	model            model
	// decode maps ids to the bytes they stand for (Decode).
	decode    map[uint32]string
	vocabSize int
	pool      sync.Pool // of *encoder
}

// Load reads a tokenizer.json file. LoadBytes parses one from memory.
func Load(path string) (*Tokenizer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, MaxFileSize>>20)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d MiB", path, MaxFileSize>>20)
	}
	t, err := LoadBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// LoadBytes parses a tokenizer.json from memory (see Load).
func LoadBytes(b []byte) (*Tokenizer, error) {
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("tokenizer.json: larger than %d MiB", MaxFileSize>>20)
	}
	return parse(b)
}

// VocabSize returns the number of ids (including added tokens): one more
// than the largest id of the vocabulary and of the added tokens, which is
// the number of tokens when the ids are dense, as in released models.
func (t *Tokenizer) VocabSize() int { return t.vocabSize }

// AppendEncode appends the ids of text to dst (no special tokens added: like
// tokenizers' encode(text, add_special_tokens=False)).
//
// text need not be valid UTF-8: a byte outside valid UTF-8 is split as one
// character of class "other" (as U+FFFD would be) and encoded as that byte,
// so Decode gives text back.
func (t *Tokenizer) AppendEncode(dst []uint32, text []byte) []uint32 {
	e, _ := t.pool.Get().(*encoder)
	if e == nil {
		e = &encoder{t: t}
	}
	e.dst = dst
	if t.added != nil {
		spans := t.added.split(text, e.spans1[:0])
		for _, sp := range spans {
			if sp.start >= sp.end {
				continue // as Hugging Face drops empty pieces
			}
			if sp.id >= 0 {
				e.dst = append(e.dst, uint32(sp.id))
			} else {
				e.normalized(text[sp.start:sp.end])
			}
		}
		e.spans1 = spans[:0]
	} else {
		e.normalized(text)
	}
	dst = e.dst
	e.dst = nil
	if cap(e.spans1) > maxPooled || cap(e.spans2) > maxPooled || cap(e.syms) > maxPooled || cap(e.queue) > maxPooled {
		*e = encoder{t: t} // a huge call's buffers are not kept
	}
	t.pool.Put(e)
	return dst
}

// Decode returns the bytes that ids stand for: the byte-level inverse of
// each vocabulary token (a token with a rune outside the byte-level
// alphabet gives its UTF-8 as is, as Hugging Face's ByteLevel decoder does)
// and the content of each added token. Unknown ids are skipped. For a
// tokenizer with a token for each of the 256 bytes, no normalizer and no
// add_prefix_space, Decode(AppendEncode(nil, x)) == x for every x.
func (t *Tokenizer) Decode(ids []uint32) []byte {
	var out []byte
	for _, id := range ids {
		out = append(out, t.decode[id]...)
	}
	return out
}

// maxPooled bounds the scratch buffers a pooled encoder keeps.
const maxPooled = 1 << 14

// encoder holds one AppendEncode call's output and scratch buffers.
type encoder struct {
	t              *Tokenizer
	dst            []uint32
	spans1, spans2 []span
	syms           []uint32
	ranks, ids     []uint32
	queue          []qmerge
	states         []matchState
}

// normalized encodes a piece without non-normalized added tokens: it
// normalizes it, then splits off the normalized added tokens.
func (e *encoder) normalized(s []byte) {
	t := e.t
	if t.nfc {
		s = nfc(s)
	}
	if t.addedNorm == nil {
		e.piece(0, s)
		return
	}
	spans := t.addedNorm.split(s, e.spans2[:0])
	for _, sp := range spans {
		if sp.start >= sp.end {
			continue
		}
		if sp.id >= 0 {
			e.dst = append(e.dst, uint32(sp.id))
		} else {
			e.piece(0, s[sp.start:sp.end])
		}
	}
	e.spans2 = spans[:0]
}

// piece runs pre-tokenizer step level and the ones after it on p, then the
// model on each word.
func (e *encoder) piece(level int, p []byte) {
	if len(p) == 0 {
		return
	}
	if level == len(e.t.steps) {
		e.t.model.encodeWord(e, p)
		return
	}
	e.t.steps[level].run(e, level, p)
}

// nfc returns the NFC form of s. Bytes outside valid UTF-8 are kept as they
// are, and the valid text between them normalized.
func nfc(s []byte) []byte {
	if norm.NFC.IsNormal(s) {
		return s
	}
	if utf8.Valid(s) {
		return nfcValid(s)
	}
	out := make([]byte, 0, len(s))
	for len(s) > 0 {
		i := 0
		for i < len(s) {
			r, w := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && w == 1 {
				break
			}
			i += w
		}
		out = append(out, nfcValid(s[:i])...)
		if i < len(s) {
			out = append(out, s[i])
			i++
		}
		s = s[i:]
	}
	return out
}

const cgj = "\u034f"

// nfcValid returns the NFC form of valid UTF-8. x/text inserts U+034F
// (CGJ) into runs of more than 30 non-starters (the Stream-Safe Text
// Format), which Hugging Face's normalizer does not: such text takes the
// textbook algorithm instead.
func nfcValid(s []byte) []byte {
	out := norm.NFC.Bytes(s)
	if bytes.Count(out, []byte(cgj)) == bytes.Count(s, []byte(cgj)) {
		return out
	}
	return nfcSlow(s)
}

// nfcSlow is NFC by its definition (UAX #15): full canonical decomposition,
// canonical ordering of each run of non-starters, canonical composition.
func nfcSlow(s []byte) []byte {
	type char struct {
		r   rune
		ccc uint8
	}
	var d []char
	for _, r := range string(s) {
		for _, c := range norm.NFD.String(string(r)) {
			d = append(d, char{c, norm.NFD.PropertiesString(string(c)).CCC()})
		}
	}
	for i := 0; i < len(d); {
		if d[i].ccc == 0 {
			i++
			continue
		}
		j := i
		for j < len(d) && d[j].ccc != 0 {
			j++
		}
		run := d[i:j]
		sort.SliceStable(run, func(a, b int) bool { return run[a].ccc < run[b].ccc })
		i = j
	}
	out := make([]rune, 0, len(d))
	starter, lastClass := -1, 256
	for _, c := range d {
		cc := int(c.ccc)
		if starter >= 0 && (lastClass < cc || lastClass == 0) {
			if x, ok := compose(out[starter], c.r); ok {
				out[starter] = x
				continue
			}
		}
		if cc == 0 {
			starter = len(out)
		}
		lastClass = cc
		out = append(out, c.r)
	}
	return []byte(string(out))
}

// compose returns the primary composite of a and b, if there is one.
func compose(a, b rune) (rune, bool) {
	pair := string([]rune{a, b})
	x := []rune(norm.NFC.String(pair))
	if len(x) != 1 || norm.NFD.String(string(x)) != norm.NFD.String(string(a))+string(b) {
		return 0, false
	}
	return x[0], true
}
