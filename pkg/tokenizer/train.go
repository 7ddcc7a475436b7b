package tokenizer

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

//go:embed corpus.txt
var corpusText string

// Corpus returns the package's small English corpus (original text, about
// 11 KB, in paragraphs), for Train and for benchmarks.
func Corpus() []string {
	var out []string
	for _, p := range strings.Split(corpusText, "\n\n") {
		if p = strings.TrimRight(p, "\n"); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// TrainedSpecialTokens are the added tokens of every tokenizer Train makes,
// with the ids that follow the BPE vocabulary, in this order.
var TrainedSpecialTokens = []string{
	"<|begin_of_text|>",
	"<|end_of_text|>",
	"<|start_header_id|>",
	"<|end_header_id|>",
	"<|eot_id|>",
}

// Train trains a byte-level BPE on corpus and returns it as a Hugging Face
// tokenizer.json in the shape of Llama 3's: no normalizer; pre-tokenizer
// Sequence[Split(Llama 3's pattern, Isolated), ByteLevel]; BPE with
// ignore_merges; the 256 byte tokens first (in GPT-2's order), then one
// token per merge, then TrainedSpecialTokens. vocabSize counts the byte
// tokens and the merged ones, not the special tokens; training stops early
// when no pair occurs twice. The output depends only on the arguments.
//
// Each step merges the most frequent adjacent pair of the corpus's words
// (ties: the pair whose tokens come first in byte order).
func Train(corpus []string, vocabSize int) ([]byte, error) {
	if vocabSize < 256 || vocabSize > 1<<20 {
		return nil, fmt.Errorf("tokenizer: vocabulary size %d not in [256, %d]", vocabSize, 1<<20)
	}
	t := newTrainer(countWords(corpus), vocabSize)
	for steps := 0; len(t.tokens) < vocabSize && steps < 4*vocabSize; steps++ {
		best, n := t.bestPair()
		if n < 2 {
			break
		}
		t.merge(best)
	}
	return encodeJSON(t.tokens, t.merges)
}

// countWords splits each text as Llama 3's pre-tokenizer does and counts
// the pieces.
func countWords(corpus []string) map[string]int {
	counts := map[string]int{}
	for _, text := range corpus {
		s := []byte(text)
		for pos := 0; pos < len(s); {
			end := scanLlama3(s, pos, 3)
			counts[string(s[pos:end])]++
			pos = end
		}
	}
	return counts
}

// trainer is Train's state: the tokens so far and each word's spelling in
// them, with the count of every adjacent pair.
type trainer struct {
	tokens []string // byte-level spellings, by id
	ids    map[string]int32
	merges [][2]string
	syms   [][]int32 // each word's tokens
	freq   []int     // each word's count
	pairs  map[uint64]int
	where  map[uint64][]int32 // pair -> words that had it (may be stale)
}

// pairOf is the key of the adjacent pair a, b.
func pairOf(a, b int32) uint64 { return uint64(a)<<32 | uint64(uint32(b)) }

// newTrainer starts from the 256 byte tokens (in GPT-2's order), the words
// of counts spelt in them, in sorted order.
func newTrainer(counts map[string]int, vocabSize int) *trainer {
	words := make([]string, 0, len(counts))
	for w := range counts {
		words = append(words, w)
	}
	sort.Strings(words)
	t := &trainer{
		tokens: make([]string, 256, vocabSize),
		ids:    map[string]int32{},
		syms:   make([][]int32, len(words)),
		freq:   make([]int, len(words)),
		pairs:  map[uint64]int{},
		where:  map[uint64][]int32{},
	}
	var byteTok [256]int32
	for i, b := range byteOrder {
		t.tokens[i] = string(byteRune[b])
		t.ids[t.tokens[i]] = int32(i)
		byteTok[b] = int32(i)
	}
	for i, w := range words {
		t.freq[i] = counts[w]
		for j := 0; j < len(w); j++ {
			t.syms[i] = append(t.syms[i], byteTok[w[j]])
		}
		t.addPairs(int32(i))
	}
	return t
}

// addPairs counts the pairs of word wi.
func (t *trainer) addPairs(wi int32) {
	s, f := t.syms[wi], t.freq[wi]
	for j := 0; j+1 < len(s); j++ {
		k := pairOf(s[j], s[j+1])
		t.pairs[k] += f
		t.where[k] = append(t.where[k], wi)
	}
}

// bestPair is the most frequent pair (ties: the pair whose tokens come
// first in byte order) and its count; the count is 1 or less when no pair
// occurs twice.
func (t *trainer) bestPair() (best uint64, bestN int) {
	bestN = 1
	for k, n := range t.pairs {
		if n > bestN || (n == bestN && n > 1 && pairLess(t.tokens, k, best)) {
			best, bestN = k, n
		}
	}
	return best, bestN
}

// merge adds the token of pair best and respells the words that have it.
func (t *trainer) merge(best uint64) {
	a, b := int32(best>>32), int32(uint32(best))
	merged := t.tokens[a] + t.tokens[b]
	id, ok := t.ids[merged]
	if !ok {
		id = int32(len(t.tokens))
		t.tokens = append(t.tokens, merged)
		t.ids[merged] = id
	}
	t.merges = append(t.merges, [2]string{t.tokens[a], t.tokens[b]})
	for _, wi := range t.where[best] {
		if hasPair(t.syms[wi], a, b) {
			t.respell(wi, a, b, id)
		}
	}
	delete(t.where, best)
}

// respell replaces each pair a, b of word wi with id, keeping the pair
// counts.
func (t *trainer) respell(wi, a, b, id int32) {
	s, f := t.syms[wi], t.freq[wi]
	for j := 0; j+1 < len(s); j++ {
		k := pairOf(s[j], s[j+1])
		if t.pairs[k] -= f; t.pairs[k] <= 0 {
			delete(t.pairs, k)
		}
	}
	out := s[:0]
	for j := 0; j < len(s); j++ {
		if j+1 < len(s) && s[j] == a && s[j+1] == b {
			out = append(out, id)
			j++
		} else {
			out = append(out, s[j])
		}
	}
	t.syms[wi] = out
	t.addPairs(wi)
}

// pairLess orders pairs by their tokens' byte spellings.
func pairLess(tokens []string, x, y uint64) bool {
	xa, xb := tokens[int32(x>>32)], tokens[int32(uint32(x))]
	ya, yb := tokens[int32(y>>32)], tokens[int32(uint32(y))]
	if xa != ya {
		return byteLevelLess(xa, ya)
	}
	return byteLevelLess(xb, yb)
}

// byteLevelLess compares two byte-level spellings by the bytes they stand for.
func byteLevelLess(x, y string) bool {
	bx, _ := byteLevelDecode(x)
	by, _ := byteLevelDecode(y)
	return bytes.Compare(bx, by) < 0
}

func hasPair(s []int32, a, b int32) bool {
	for j := 0; j+1 < len(s); j++ {
		if s[j] == a && s[j+1] == b {
			return true
		}
	}
	return false
}

// encodeJSON writes the tokenizer.json of a trained vocabulary, indented as
// Hugging Face writes it, with the vocabulary in id order and the merges as
// "a b" strings, which every version of tokenizers reads (byte-level tokens
// have no spaces).
func encodeJSON(tokens []string, merges [][2]string) ([]byte, error) {
	var b strings.Builder
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n")
	added := make([]string, len(TrainedSpecialTokens))
	for i, s := range TrainedSpecialTokens {
		added[i] = fmt.Sprintf("    {\n      \"id\": %d,\n      \"content\": %s,\n      \"single_word\": false,\n      \"lstrip\": false,\n      \"rstrip\": false,\n      \"normalized\": false,\n      \"special\": true\n    }", len(tokens)+i, jsonString(s))
	}
	writeJSONLines(&b, added)
	b.WriteString(trainedPipelineJSON())
	vocab := make([]string, len(tokens))
	for i, t := range tokens {
		vocab[i] = fmt.Sprintf("      %s: %d", jsonString(t), i)
	}
	writeJSONLines(&b, vocab)
	b.WriteString("    },\n    \"merges\": [\n")
	lines := make([]string, len(merges))
	for i, m := range merges {
		lines[i] = "      " + jsonString(m[0]+" "+m[1])
	}
	writeJSONLines(&b, lines)
	b.WriteString("    ]\n  }\n}\n")
	return []byte(b.String()), nil
}

// jsonString is s as a JSON string, HTML characters unescaped.
func jsonString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		panic(err) // a string always encodes
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// writeJSONLines writes items one a line, separated by commas.
func writeJSONLines(b *strings.Builder, items []string) {
	for i, item := range items {
		b.WriteString(item)
		if i < len(items)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
}

// trainedPipelineJSON is the middle of Train's tokenizer.json, from the end
// of added_tokens to the start of the vocabulary.
func trainedPipelineJSON() string {
	return `  ],
  "normalizer": null,
  "pre_tokenizer": {
    "type": "Sequence",
    "pretokenizers": [
      {
        "type": "Split",
        "pattern": {
          "Regex": ` + jsonString(llama3Pattern) + `
        },
        "behavior": "Isolated",
        "invert": false
      },
      {
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": true,
        "use_regex": false
      }
    ]
  },
  "post_processor": {
    "type": "ByteLevel",
    "add_prefix_space": true,
    "trim_offsets": false,
    "use_regex": true
  },
  "decoder": {
    "type": "ByteLevel",
    "add_prefix_space": true,
    "trim_offsets": true,
    "use_regex": true
  },
  "model": {
    "type": "BPE",
    "dropout": null,
    "unk_token": null,
    "continuing_subword_prefix": null,
    "end_of_word_suffix": null,
    "fuse_unk": false,
    "byte_fallback": false,
    "ignore_merges": true,
    "vocab": {
`
}
