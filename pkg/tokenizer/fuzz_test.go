package tokenizer

import (
	"bytes"
	"slices"
	"sync"
	"testing"
)

func FuzzLoadBytes(f *testing.F) {
	f.Add(mustRead(f, "testdata/tokenizer.json"))
	f.Add(withPreTokenizer(f, gpt2Pre))
	f.Add(spec{extra: []string{"ab"}, merges: [][2]string{{"a", "b"}}, mergeStrings: true}.json())
	f.Add(spec{
		extra: []string{"<unk>"}, normalizer: `{"type": "NFC"}`, modelExtra: `, "unk_token": "<unk>"`,
		added: `[{"id": 0, "content": "<m>", "single_word": true, "lstrip": true, "rstrip": true, "normalized": true, "special": false}]`,
		pre: `{"type": "Sequence", "pretokenizers": [
			{"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": true},
			{"type": "Split", "pattern": {"Regex": "\\p{N}+|\\s+(?!\\S)"}, "behavior": "Contiguous", "invert": false},
			{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}]}`,
	}.json())
	f.Add([]byte(`{"model": {"vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tk, err := LoadBytes(b)
		if err != nil {
			return
		}
		for _, s := range []string{"", "Hello world", "a  b\n\n ", "<|eot_id|>x<m>", "\xff\xfe", "it's é 12345 -a-b-"} {
			ids := tk.AppendEncode(nil, []byte(s))
			for _, id := range ids {
				if int(id) >= tk.VocabSize() {
					t.Fatalf("%q: id %d >= VocabSize %d", s, id, tk.VocabSize())
				}
			}
			tk.Decode(ids)
		}
	})
}

var (
	fuzzOnce  sync.Once
	fuzzToks  []*Tokenizer // Decode(AppendEncode(x)) == x
	fuzzOther []*Tokenizer // normalizing, or adding a prefix space
	fuzzSplit [][2]splitter
)

func FuzzEncode(f *testing.F) {
	for _, p := range Corpus()[:5] {
		f.Add([]byte(p))
	}
	for _, c := range splitCases {
		f.Add([]byte(c.in))
	}
	f.Add([]byte("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"))
	f.Add([]byte("\xff\xc3 \xe2\x80\x83x\r\n\t  '\xc5\xbf"))
	fuzzOnce.Do(func() {
		gpt2, err := LoadBytes(withPreTokenizer(f, gpt2Pre))
		if err != nil {
			f.Fatal(err)
		}
		fuzzToks = []*Tokenizer{testdataTokenizer(f), gpt2}
		nfc, err := LoadBytes(spec{
			extra: []string{"ab", "<unk>"}, merges: [][2]string{{"a", "b"}}, normalizer: `{"type": "NFC"}`,
			added: `[{"id": 0, "content": "é", "single_word": true, "lstrip": true, "rstrip": true, "normalized": true, "special": false},
				{"id": 0, "content": " <m> ", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true}]`,
			pre: `{"type": "Sequence", "pretokenizers": [
				{"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": true},
				{"type": "Split", "pattern": {"Regex": "\\p{N}+|[^\\s\\p{N}]+|\\s+(?!\\S)"}, "behavior": "Contiguous", "invert": false},
				{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}]}`,
		}.json())
		if err != nil {
			f.Fatal(err)
		}
		fuzzOther = []*Tokenizer{nfc}
		for _, p := range []string{gpt2Pattern, llama3Pattern, qwen2Pattern} {
			fast, _ := newSplitter(p)
			fuzzSplit = append(fuzzSplit, [2]splitter{fast, genericSplitter(f, p)})
		}
	})
	f.Fuzz(func(t *testing.T, text []byte) {
		for _, tk := range fuzzToks {
			if got := tk.Decode(tk.AppendEncode(nil, text)); !bytes.Equal(got, text) {
				t.Fatalf("%q: decoded %q", text, got)
			}
		}
		for _, tk := range fuzzOther {
			for _, id := range tk.AppendEncode(nil, text) {
				if int(id) >= tk.VocabSize() {
					t.Fatalf("%q: id %d >= VocabSize %d", text, id, tk.VocabSize())
				}
			}
		}
		for _, sp := range fuzzSplit {
			if a, b := pieces(sp[0], string(text)), pieces(sp[1], string(text)); !slices.Equal(a, b) {
				t.Fatalf("%q: scanner %q, regexp %q", text, a, b)
			}
		}
	})
}

func mustRead(f *testing.F, path string) []byte {
	b, err := readFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
