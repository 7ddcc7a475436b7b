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
	counts := map[string]int{}
	for _, text := range corpus {
		s := []byte(text)
		for pos := 0; pos < len(s); {
			end := scanLlama3(s, pos, 3)
			counts[string(s[pos:end])]++
			pos = end
		}
	}
	words := make([]string, 0, len(counts))
	for w := range counts {
		words = append(words, w)
	}
	sort.Strings(words)

	tokens := make([]string, 256, vocabSize) // byte-level spellings
	ids := map[string]int32{}
	var byteTok [256]int32
	for i, b := range byteOrder {
		tokens[i] = string(byteRune[b])
		ids[tokens[i]] = int32(i)
		byteTok[b] = int32(i)
	}
	syms := make([][]int32, len(words))
	freq := make([]int, len(words))
	pairs := map[uint64]int{}
	where := map[uint64][]int32{} // pair -> words that had it (may be stale)
	key := func(a, b int32) uint64 { return uint64(a)<<32 | uint64(uint32(b)) }
	for i, w := range words {
		freq[i] = counts[w]
		for j := 0; j < len(w); j++ {
			syms[i] = append(syms[i], byteTok[w[j]])
		}
		for j := 0; j+1 < len(syms[i]); j++ {
			k := key(syms[i][j], syms[i][j+1])
			pairs[k] += freq[i]
			where[k] = append(where[k], int32(i))
		}
	}
	var merges [][2]string
	for steps := 0; len(tokens) < vocabSize && steps < 4*vocabSize; steps++ {
		var best uint64
		bestN := 1
		for k, n := range pairs {
			if n > bestN || (n == bestN && n > 1 && pairLess(tokens, k, best)) {
				best, bestN = k, n
			}
		}
		if bestN < 2 {
			break
		}
		a, b := int32(best>>32), int32(uint32(best))
		merged := tokens[a] + tokens[b]
		id, ok := ids[merged]
		if !ok {
			id = int32(len(tokens))
			tokens = append(tokens, merged)
			ids[merged] = id
		}
		merges = append(merges, [2]string{tokens[a], tokens[b]})
		for _, wi := range where[best] {
			s := syms[wi]
			if !hasPair(s, a, b) {
				continue
			}
			f := freq[wi]
			for j := 0; j+1 < len(s); j++ {
				k := key(s[j], s[j+1])
				if pairs[k] -= f; pairs[k] <= 0 {
					delete(pairs, k)
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
			syms[wi] = out
			for j := 0; j+1 < len(out); j++ {
				k := key(out[j], out[j+1])
				pairs[k] += f
				where[k] = append(where[k], wi)
			}
		}
		delete(where, best)
	}
	return encodeJSON(tokens, merges)
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
	q := func(s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			panic(err) // a string always encodes
		}
		return strings.TrimSuffix(b.String(), "\n")
	}
	var b strings.Builder
	b.WriteString("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n")
	for i, s := range TrainedSpecialTokens {
		fmt.Fprintf(&b, "    {\n      \"id\": %d,\n      \"content\": %s,\n      \"single_word\": false,\n      \"lstrip\": false,\n      \"rstrip\": false,\n      \"normalized\": false,\n      \"special\": true\n    }", len(tokens)+i, q(s))
		if i < len(TrainedSpecialTokens)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString(`  ],
  "normalizer": null,
  "pre_tokenizer": {
    "type": "Sequence",
    "pretokenizers": [
      {
        "type": "Split",
        "pattern": {
          "Regex": ` + q(llama3Pattern) + `
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
`)
	for i, t := range tokens {
		fmt.Fprintf(&b, "      %s: %d", q(t), i)
		if i < len(tokens)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("    },\n    \"merges\": [\n")
	for i, m := range merges {
		fmt.Fprintf(&b, "      %s", q(m[0]+" "+m[1]))
		if i < len(merges)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("    ]\n  }\n}\n")
	return []byte(b.String()), nil
}
