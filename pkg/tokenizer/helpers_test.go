package tokenizer

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// spec describes a small tokenizer.json for a test.
type spec struct {
	extra        []string    // tokens after the 256 byte tokens (raw bytes)
	merges       [][2]string // raw bytes
	mergeStrings bool        // merges as "a b" rather than ["a", "b"]
	ignoreMerges bool
	added        string // raw JSON of added_tokens, "" for []
	pre          string // raw JSON of pre_tokenizer, "" for Llama 3's
	normalizer   string // raw JSON, "" for null
	modelExtra   string // raw JSON fields added to the model, with a leading comma
}

const llama3Pre = `{"type": "Sequence", "pretokenizers": [
	{"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
	{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}`

const gpt2Pre = `{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}`

// ids of the spec's tokens: the byte tokens in GPT-2's order, then extra.
func (s spec) vocab() []string {
	var v []string
	for _, b := range byteOrder {
		v = append(v, string([]byte{b}))
	}
	return append(v, s.extra...)
}

func (s spec) json() []byte {
	q := func(raw string) string {
		b, _ := json.Marshal(byteLevelEncode([]byte(raw)))
		return string(b)
	}
	var vocab []string
	for i, t := range s.vocab() {
		vocab = append(vocab, fmt.Sprintf("%s: %d", q(t), i))
	}
	var merges []string
	for _, m := range s.merges {
		if s.mergeStrings {
			b, _ := json.Marshal(byteLevelEncode([]byte(m[0])) + " " + byteLevelEncode([]byte(m[1])))
			merges = append(merges, string(b))
		} else {
			merges = append(merges, "["+q(m[0])+", "+q(m[1])+"]")
		}
	}
	pre, added, norm := s.pre, s.added, s.normalizer
	if pre == "" {
		pre = llama3Pre
	}
	if added == "" {
		added = "[]"
	}
	if norm == "" {
		norm = "null"
	}
	return fmt.Appendf(nil, `{"version": "1.0", "truncation": null, "padding": null,
"added_tokens": %s, "normalizer": %s, "pre_tokenizer": %s, "post_processor": null, "decoder": null,
"model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
"end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": %v%s,
"vocab": {%s}, "merges": [%s]}}`, added, norm, pre, s.ignoreMerges, s.modelExtra,
		strings.Join(vocab, ", "), strings.Join(merges, ", "))
}

func (s spec) load(t testing.TB) *Tokenizer {
	t.Helper()
	tk, err := LoadBytes(s.json())
	if err != nil {
		t.Fatalf("LoadBytes: %v\n%s", err, s.json())
	}
	return tk
}

// id returns the id of token tok in spec s.
func (s spec) id(t testing.TB, tok string) uint32 {
	t.Helper()
	for i, v := range s.vocab() {
		if v == tok {
			return uint32(i)
		}
	}
	t.Fatalf("no token %q", tok)
	return 0
}

func (s spec) ids(t testing.TB, toks ...string) []uint32 {
	var out []uint32
	for _, tok := range toks {
		out = append(out, s.id(t, tok))
	}
	return out
}

// encode is AppendEncode on a string.
func encode(tk *Tokenizer, s string) []uint32 { return tk.AppendEncode(nil, []byte(s)) }

var (
	trainedOnce sync.Once
	trained     *Tokenizer
)

// testdataTokenizer returns the tokenizer of testdata/tokenizer.json.
func testdataTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	trainedOnce.Do(func() {
		tk, err := Load("testdata/tokenizer.json")
		if err != nil {
			panic(err)
		}
		trained = tk
	})
	return trained
}

// pieces returns the pieces of s by sp under Isolated: matches and the text
// between them.
func pieces(sp splitter, s string) []string {
	var out []string
	var st matchState
	b := []byte(s)
	pos := 0
	for pos < len(b) {
		ms, me := sp.next(b, pos, &st)
		if ms < 0 {
			break
		}
		if ms > pos {
			out = append(out, s[pos:ms])
		}
		out = append(out, s[ms:me])
		pos = me
	}
	if pos < len(b) {
		out = append(out, s[pos:])
	}
	return out
}

// testRunes are characters the split patterns treat differently: letters
// of several scripts and cases, numbers of the three N categories, the
// characters of the contractions, white space of several kinds (including
// Unicode's), marks, symbols, punctuation, and lookalikes that are not white
// space. All were assigned long ago, so every Unicode version agrees.
var testRunes = []rune("abcdeZ stSTreREvVmMlLdD'' \n\r\t\n  09.,!?()-_/$é\u00dfſ日本ك٣²Ⅻ½\u00a0\u2003\u3000\u0085\u000b\u000c\u2028\u1680\u0301\u200b\u180e😀\u0100")

func randomText(r *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteRune(testRunes[r.IntN(len(testRunes))])
	}
	return b.String()
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		switch r.IntN(4) {
		case 0:
			b[i] = byte(r.IntN(256))
		case 1:
			b[i] = " \n\t'"[r.IntN(4)]
		default:
			b[i] = byte('a' + r.IntN(26))
		}
	}
	return b
}
