package tokenizer

import (
	"bytes"
	"encoding/json"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/tokenizer.json")

// testdataVocabSize is the vocabSize of testdata/tokenizer.json.
const testdataVocabSize = 1000

func TestTestdataIsRegenerated(t *testing.T) {
	got, err := Train(Corpus(), testdataVocabSize)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("testdata/tokenizer.json", got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Train(Corpus(), %d) differs from testdata/tokenizer.json (go test ./pkg/tokenizer -run TestTestdataIsRegenerated -args -update)", testdataVocabSize)
	}
	if len(want) > 200<<10 {
		t.Errorf("testdata/tokenizer.json is %d bytes", len(want))
	}
	again, _ := Train(Corpus(), testdataVocabSize)
	if !bytes.Equal(got, again) {
		t.Fatal("Train is not deterministic")
	}
}

func TestTrainShape(t *testing.T) {
	tk := testdataTokenizer(t)
	if got, want := tk.VocabSize(), testdataVocabSize+len(TrainedSpecialTokens); got != want {
		t.Errorf("VocabSize = %d, want %d", got, want)
	}
	var f struct {
		Version     string
		AddedTokens []struct {
			ID      int
			Content string
		} `json:"added_tokens"`
		Model struct {
			Vocab  map[string]int
			Merges []string
		}
	}
	b, _ := os.ReadFile("testdata/tokenizer.json")
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.Version != "1.0" || len(f.Model.Vocab) != testdataVocabSize || len(f.Model.Merges) < 300 {
		t.Errorf("version %q, %d tokens, %d merges", f.Version, len(f.Model.Vocab), len(f.Model.Merges))
	}
	for i, a := range f.AddedTokens {
		if a.ID != testdataVocabSize+i || a.Content != TrainedSpecialTokens[i] {
			t.Errorf("added token %d: %+v", i, a)
		}
	}
	if _, err := Train(nil, 255); err == nil {
		t.Error("Train(nil, 255): no error")
	}
	small, err := Train([]string{"ab cd"}, 300)
	if err != nil {
		t.Fatal(err)
	}
	if tk, err := LoadBytes(small); err != nil || tk.VocabSize() != 256+len(TrainedSpecialTokens) {
		t.Errorf("a corpus without repeated pairs: %v", err)
	}
}

// vocabID returns the id of a token of testdata/tokenizer.json, by bytes.
func vocabID(t *testing.T, tok string) uint32 {
	t.Helper()
	id, ok := testdataTokenizer(t).model.words[tok]
	if !ok {
		t.Fatalf("no token %q in testdata/tokenizer.json", tok)
	}
	return id
}

func TestMergesByRankNotLeftToRight(t *testing.T) {
	s := spec{extra: []string{"bc", "ab"}, merges: [][2]string{{"b", "c"}, {"a", "b"}}}
	for _, strs := range []bool{false, true} {
		s.mergeStrings = strs
		tk := s.load(t)
		// Left to right would give ab c; rank 0 is (b, c).
		if got, want := encode(tk, "abc"), s.ids(t, "a", "bc"); !slices.Equal(got, want) {
			t.Errorf("abc: got %v, want %v", got, want)
		}
		if got, want := encode(tk, "abcab"), s.ids(t, "a", "bc", "ab"); !slices.Equal(got, want) {
			t.Errorf("abcab: got %v, want %v", got, want)
		}
	}
}

func TestMergeTiesGoLeftmost(t *testing.T) {
	s := spec{extra: []string{"aa", "aaaa"}, merges: [][2]string{{"a", "a"}, {"aa", "aa"}}}
	tk := s.load(t)
	for in, want := range map[string][]string{
		"aaa":   {"aa", "a"},
		"aaaa":  {"aaaa"},
		"aaaaa": {"aaaa", "a"},
	} {
		if got := encode(tk, in); !slices.Equal(got, s.ids(t, want...)) {
			t.Errorf("%s: got %v, want %v", in, got, s.ids(t, want...))
		}
	}
}

// A merge is applied one occurrence at a time, in rank order: a pair formed
// by a merge can go before the other occurrences of that merge's pair
// (GPT-2's Python would merge every (a, b) first and give xab ab).
func TestMergeOneOccurrenceAtATime(t *testing.T) {
	s := spec{
		extra:  []string{"ab", "xab", "xaba"},
		merges: [][2]string{{"x", "ab"}, {"xab", "a"}, {"a", "b"}},
	}
	tk := s.load(t)
	if got, want := encode(tk, "xabab"), s.ids(t, "xaba", "b"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestIgnoreMerges(t *testing.T) {
	s := spec{extra: []string{"ab", "abc"}, merges: [][2]string{{"a", "b"}}}
	if got, want := encode(s.load(t), "abc"), s.ids(t, "ab", "c"); !slices.Equal(got, want) {
		t.Errorf("without ignore_merges: got %v, want %v", got, want)
	}
	s.ignoreMerges = true
	if got, want := encode(s.load(t), "abc"), s.ids(t, "abc"); !slices.Equal(got, want) {
		t.Errorf("with ignore_merges: got %v, want %v", got, want)
	}
}

func TestRepeatedMergeLastWins(t *testing.T) {
	// (a, b) at ranks 0 and 2: rank 2 counts, so (b, c) at rank 1 goes first.
	s := spec{extra: []string{"ab", "bc"}, merges: [][2]string{{"a", "b"}, {"b", "c"}, {"a", "b"}}}
	if got, want := encode(s.load(t), "abc"), s.ids(t, "a", "bc"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestUnicodeBytes(t *testing.T) {
	s := spec{}
	tk := s.load(t)
	// No merges: one token per UTF-8 byte, in the byte-level alphabet.
	want := s.ids(t, "\xc3", "\xa9", " ", "\xe6", "\x97", "\xa5")
	if got := encode(tk, "é 日"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := s.id(t, "!"); got != 0 {
		t.Errorf("byte ! has id %d, want 0 (GPT-2's order)", got)
	}
	if got := s.id(t, "\x00"); got != 188 {
		t.Errorf("byte 0 has id %d, want 188 (GPT-2's order)", got)
	}
}

// With the trained tokenizer, encoding a text is encoding each of its
// pieces: the split of TestSplitHandChecked reaches the model.
func TestEncodeIsEncodeOfPieces(t *testing.T) {
	tk := testdataTokenizer(t)
	for _, c := range splitCases {
		if c.pattern != llama3Pattern {
			continue
		}
		var want []uint32
		for _, p := range c.want {
			e := &encoder{t: tk}
			tk.model.encodeWord(e, []byte(p))
			want = append(want, e.dst...)
		}
		if got := encode(tk, c.in); !slices.Equal(got, want) {
			t.Errorf("%q: got %v, want %v", c.in, got, want)
		}
	}
}

func TestTrainedHandChecked(t *testing.T) {
	tk := testdataTokenizer(t)
	id := func(s string) uint32 { return vocabID(t, s) }
	for in, want := range map[string][]uint32{
		" the":                {id(" the")},
		"The committee":       {id("The"), id(" committee")},
		"a  b":                {id("a"), id(" "), id(" b")},
		"a \n\n":              {id("a"), id(" "), id("\n"), id("\n")},
		"don't":               append(encode(tk, "don"), id("'t")),
		"I'm":                 {id("I"), id("'m")},
		"1911":                append(encode(tk, "191"), id("1")),
		"afternoon  ":         cat(encode(tk, "afternoon"), []uint32{id("  ")}),
		"<|eot_id|>":          {1004},
		"<|eot_id|><|eot_":    append([]uint32{1004}, encode(tk, "<|eot_")...),
		"hi<|begin_of_text|>": append(encode(tk, "hi"), 1000),
		"<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>": cat([]uint32{1002},
			encode(tk, "user"), []uint32{1003, id("\n"), id("\n")}, encode(tk, "Hello"), []uint32{1004}),
	} {
		if got := encode(tk, in); !slices.Equal(got, want) {
			t.Errorf("%q: got %v, want %v", in, got, want)
		}
	}
}

func cat(parts ...[]uint32) []uint32 { return slices.Concat(parts...) }

func TestAppendEncodeAppends(t *testing.T) {
	tk := testdataTokenizer(t)
	dst := []uint32{7, 8}
	got := tk.AppendEncode(dst, []byte("Hello world"))
	if !slices.Equal(got[:2], []uint32{7, 8}) || !slices.Equal(got[2:], encode(tk, "Hello world")) {
		t.Errorf("got %v", got)
	}
	if got := tk.AppendEncode(nil, nil); len(got) != 0 {
		t.Errorf("empty text: %v", got)
	}
}

// Hugging Face's own cases for single_word, lstrip and rstrip
// (added_vocabulary.rs tests), without their lowercasing normalizer.
func TestAddedTokenOptions(t *testing.T) {
	split := func(toks []addedToken, s string) []string {
		var out []string
		for _, sp := range newAddedMatcher(toks).split([]byte(s), nil) {
			piece := s[sp.start:sp.end]
			if sp.id >= 0 {
				piece = "[" + piece + "]"
			}
			out = append(out, piece)
		}
		return out
	}
	mask := addedToken{content: "<mask>", singleWord: true}
	got := split([]addedToken{mask}, "<mask> My name <mask> A<mask> <mask>ony <mask>")
	want := []string{"[<mask>]", " My name ", "[<mask>]", " A<mask> <mask>ony ", "[<mask>]"}
	if !slices.Equal(got, want) {
		t.Errorf("single_word: got %q, want %q", got, want)
	}
	got = split([]addedToken{mask}, "<mask>, <mask>- ◌̰<mask>")
	want = []string{"[<mask>]", ", ", "[<mask>]", "- ◌̰<mask>"}
	if !slices.Equal(got, want) {
		t.Errorf("single_word, unicode: got %q, want %q", got, want)
	}
	mask.lstrip, mask.rstrip = true, true
	got = split([]addedToken{mask}, "Hi <mask> there\t<mask>\t<mask>\u2000")
	want = []string{"Hi", "[ <mask> ]", "there", "[\t<mask>\t]", "[<mask>\u2000]"}
	if !slices.Equal(got, want) {
		t.Errorf("lstrip, rstrip: got %q, want %q", got, want)
	}
	// Leftmost, then longest.
	got = split([]addedToken{{content: "ab"}, {content: "abc"}, {content: "bcd"}}, "xabcd")
	want = []string{"x", "[abc]", "d"}
	if !slices.Equal(got, want) {
		t.Errorf("leftmost longest: got %q, want %q", got, want)
	}
}

func TestAddedTokenIDs(t *testing.T) {
	// Hugging Face gives an added token its vocabulary id if it has one,
	// else the next id after the vocabulary, whatever the file says.
	s := spec{extra: []string{"<s>"}, added: `[
		{"id": 5, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
		{"id": 900, "content": "<new>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
		{"id": 901, "content": "<new2>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}]`}
	tk := s.load(t)
	if got, want := encode(tk, "<s><new><new2>"), []uint32{256, 257, 258}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if tk.VocabSize() != 259 {
		t.Errorf("VocabSize = %d", tk.VocabSize())
	}
	if got := string(tk.Decode([]uint32{258, 256})); got != "<new2><s>" {
		t.Errorf("Decode: %q", got)
	}
}

func TestNFC(t *testing.T) {
	s := spec{
		normalizer: `{"type": "NFC"}`,
		added: `[{"id": 256, "content": "é!", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false},
			{"id": 257, "content": "e\u0301?", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}]`,
	}
	tk := s.load(t)
	if got, want := encode(tk, "e\u0301x"), encode(tk, "éx"); !slices.Equal(got, want) {
		t.Errorf("NFC: got %v, want %v", got, want)
	}
	// A normalized added token matches the normalized text; one that is
	// not normalized matches the raw text.
	if got, want := encode(tk, "e\u0301!"), []uint32{256}; !slices.Equal(got, want) {
		t.Errorf("normalized token: got %v, want %v", got, want)
	}
	if got, want := encode(tk, "e\u0301?"), []uint32{257}; !slices.Equal(got, want) {
		t.Errorf("raw token: got %v, want %v", got, want)
	}
	s.normalizer = `{"type": "Sequence", "normalizers": [{"type": "NFC"}]}`
	if got, want := encode(s.load(t), "e\u0301x"), encode(tk, "éx"); !slices.Equal(got, want) {
		t.Errorf("Sequence[NFC]: got %v, want %v", got, want)
	}
}

func TestUnknownBytes(t *testing.T) {
	base := spec{extra: []string{"<unk>"}}
	b := base.json()
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	model := f["model"].(map[string]any)
	vocab := model["vocab"].(map[string]any)
	delete(vocab, "z")
	load := func(unk any, fuse bool) *Tokenizer {
		model["unk_token"], model["fuse_unk"] = unk, fuse
		b, _ := json.Marshal(f)
		tk, err := LoadBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	a, bb, unk := base.id(t, "a"), base.id(t, "b"), base.id(t, "<unk>")
	for _, c := range []struct {
		unk  any
		fuse bool
		want []uint32
	}{
		{nil, false, []uint32{a, bb}},
		{"<unk>", false, []uint32{a, unk, unk, bb}},
		{"<unk>", true, []uint32{a, unk, bb}},
	} {
		if got := encode(load(c.unk, c.fuse), "azzb"); !slices.Equal(got, c.want) {
			t.Errorf("unk %v fuse %v: got %v, want %v", c.unk, c.fuse, got, c.want)
		}
	}
	model["unk_token"] = "<nope>"
	b, _ = json.Marshal(f)
	if _, err := LoadBytes(b); err == nil || !strings.Contains(err.Error(), "model.unk_token") {
		t.Errorf("unk_token out of the vocabulary: %v", err)
	}
}

func TestAddPrefixSpace(t *testing.T) {
	s := spec{
		extra:  []string{" h", " he"},
		merges: [][2]string{{" ", "h"}, {" h", "e"}},
		pre:    `{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}`,
		added:  `[{"id": 258, "content": "<e>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]`,
	}
	tk := s.load(t)
	if got, want := encode(tk, "he"), s.ids(t, " he"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got, want := encode(tk, "<e>he he"), append([]uint32{258}, s.ids(t, " he", " he")...); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestSplitBehaviors(t *testing.T) {
	split := func(behavior string, invert bool) []string {
		s := spec{pre: `{"type": "Sequence", "pretokenizers": [
			{"type": "Split", "pattern": {"String": "-"}, "behavior": "` + behavior + `", "invert": ` + map[bool]string{true: "true", false: "false"}[invert] + `},
			{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}`}
		tk := s.load(t)
		var out []string
		e := &encoder{t: tk}
		tk.steps[0].(*splitStep).runPieces(e, "a--b-c", func(p string) { out = append(out, p) })
		return out
	}
	for _, c := range []struct {
		behavior string
		invert   bool
		want     []string
	}{
		{"Isolated", false, []string{"a", "-", "-", "b", "-", "c"}},
		{"Removed", false, []string{"a", "b", "c"}},
		{"Removed", true, []string{"-", "-", "-"}},
		{"MergedWithPrevious", false, []string{"a-", "-", "b-", "c"}},
		{"MergedWithNext", false, []string{"a", "-", "-b", "-c"}},
		{"Contiguous", false, []string{"a", "--", "b", "-", "c"}},
		{"MergedWithPrevious", true, []string{"a", "-", "-b", "-c"}},
	} {
		if got := split(c.behavior, c.invert); !slices.Equal(got, c.want) {
			t.Errorf("%s invert %v: got %q, want %q", c.behavior, c.invert, got, c.want)
		}
	}
}

// runPieces collects the pieces a split step hands on, for tests.
func (st *splitStep) runPieces(e *encoder, s string, fn func(string)) {
	saved := e.t.steps
	e.t.steps = []preStep{st, collectStep{fn}}
	defer func() { e.t.steps = saved }()
	st.run(e, 0, []byte(s))
}

type collectStep struct{ fn func(string) }

func (c collectStep) run(_ *encoder, _ int, p []byte) { c.fn(string(p)) }

func TestMergesFormats(t *testing.T) {
	vocab := map[string]uint32{"a": 0, "b c d": 1, "ab c d": 2, "x": 3, "y": 4, "xy": 5}
	o := object{"merges": json.RawMessage(`["a b c d", "x y"]`)}
	got, err := parseMerges(o, vocab)
	if err != nil || !slices.Equal(got, [][2]string{{"a", "b c d"}, {"x", "y"}}) {
		t.Errorf("got %q, %v", got, err)
	}
	o["merges"] = json.RawMessage(`[["a", "b c d"], ["x", "y"]]`)
	if got2, err := parseMerges(o, vocab); err != nil || !slices.Equal(got, got2) {
		t.Errorf("pairs: got %q, %v", got2, err)
	}
	for _, bad := range []string{`["xy"]`, `[["x"]]`, `[["x", "y", "z"]]`, `["x y", ["x", "y"]]`, `{}`, `[1]`} {
		o["merges"] = json.RawMessage(bad)
		if _, err := parseMerges(o, vocab); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	base, err := os.ReadFile("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(fn func(f map[string]any)) []byte {
		var f map[string]any
		if err := json.Unmarshal(base, &f); err != nil {
			t.Fatal(err)
		}
		fn(f)
		b, _ := json.Marshal(f)
		return b
	}
	model := func(f map[string]any) map[string]any { return f["model"].(map[string]any) }
	pre := func(f map[string]any) []any { return f["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any) }
	for _, c := range []struct {
		name string
		in   []byte
		want string
	}{
		{"not json", []byte("{"), "tokenizer.json"},
		{"not an object", []byte("[]"), "tokenizer.json"},
		{"unigram", mutate(func(f map[string]any) { model(f)["type"] = "Unigram" }), `tokenizer.json: model.type "Unigram" not supported`},
		{"wordpiece", mutate(func(f map[string]any) { model(f)["type"] = "WordPiece" }), `model.type "WordPiece" not supported`},
		{"version", mutate(func(f map[string]any) { f["version"] = "2.0" }), "version"},
		{"truncation", mutate(func(f map[string]any) { f["truncation"] = map[string]any{"max_length": 5} }), "truncation"},
		{"padding", mutate(func(f map[string]any) { f["padding"] = map[string]any{} }), "padding"},
		{"nfkc", mutate(func(f map[string]any) { f["normalizer"] = map[string]any{"type": "NFKC"} }), `normalizer.type "NFKC"`},
		{"metaspace", mutate(func(f map[string]any) { f["pre_tokenizer"] = map[string]any{"type": "Metaspace"} }), `pre_tokenizer.type "Metaspace"`},
		{"no pre_tokenizer", mutate(func(f map[string]any) { f["pre_tokenizer"] = nil }), "pre_tokenizer"},
		{"lookahead", mutate(func(f map[string]any) {
			pre(f)[0].(map[string]any)["pattern"] = map[string]any{"Regex": `a(?=b)`}
		}), "pre_tokenizer.pretokenizers[0].pattern"},
		{"behavior", mutate(func(f map[string]any) { pre(f)[0].(map[string]any)["behavior"] = "Sideways" }), "behavior"},
		{"bytelevel first", mutate(func(f map[string]any) {
			p := pre(f)
			p[0], p[1] = p[1], p[0]
		}), "pre_tokenizer.pretokenizers[0]"},
		{"digits", mutate(func(f map[string]any) { pre(f)[0] = map[string]any{"type": "Digits"} }), `"Digits" not supported`},
		{"byte_fallback", mutate(func(f map[string]any) { model(f)["byte_fallback"] = true }), "model.byte_fallback"},
		{"dropout", mutate(func(f map[string]any) { model(f)["dropout"] = 0.1 }), "model.dropout"},
		{"prefix", mutate(func(f map[string]any) { model(f)["continuing_subword_prefix"] = "##" }), "model.continuing_subword_prefix"},
		{"merge token", mutate(func(f map[string]any) { model(f)["merges"] = []any{[]any{"zz", "q"}} }), "model.merges[0]"},
		{"vocab type", mutate(func(f map[string]any) { model(f)["vocab"] = []any{1} }), "model.vocab"},
		{"negative id", mutate(func(f map[string]any) { model(f)["vocab"].(map[string]any)["!"] = -1 }), "model.vocab"},
		{"added id", mutate(func(f map[string]any) { f["added_tokens"].([]any)[0].(map[string]any)["id"] = "x" }), "added_tokens[0].id"},
		{"no model", mutate(func(f map[string]any) { delete(f, "model") }), "model"},
	} {
		_, err := LoadBytes(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
		}
	}
	if _, err := LoadBytes(make([]byte, MaxFileSize+1)); err == nil {
		t.Error("a file over 64 MiB: no error")
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load("testdata/none.json"); err == nil {
		t.Error("missing file: no error")
	}
	big := filepath.Join(t.TempDir(), "big.json")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxFileSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "64 MiB") {
		t.Errorf("a file over 64 MiB: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false}}`), 0o644)
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "bad.json") || !strings.Contains(err.Error(), "Unigram") {
		t.Errorf("error names neither file nor field: %v", err)
	}
}

// Decode(AppendEncode(x)) == x for random UTF-8 and random bytes, with the
// Llama 3 and the GPT-2 pre-tokenizers.
func TestRoundTrip(t *testing.T) {
	gpt2, err := LoadBytes(withPreTokenizer(t, gpt2Pre))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for name, tk := range map[string]*Tokenizer{"llama3": testdataTokenizer(t), "gpt2": gpt2} {
		for i := range 3000 {
			var x []byte
			switch i % 3 {
			case 0:
				x = randomBytes(r, r.IntN(60))
			case 1:
				x = []byte(randomText(r, r.IntN(60)))
			default:
				c := Corpus()
				p := c[r.IntN(len(c))]
				x = []byte(p[r.IntN(len(p)):])
				if r.IntN(2) == 0 {
					x = append(x, "<|eot_id|>"...)
				}
			}
			if got := tk.Decode(tk.AppendEncode(nil, x)); !bytes.Equal(got, x) {
				t.Fatalf("%s: %q: decoded %q", name, x, got)
			}
		}
	}
}

// withPreTokenizer returns testdata/tokenizer.json with another
// pre_tokenizer.
func withPreTokenizer(t testing.TB, pre string) []byte {
	b, err := os.ReadFile("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]json.RawMessage
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	f["pre_tokenizer"] = json.RawMessage(pre)
	out, _ := json.Marshal(f)
	return out
}

// The quadratic merge and the priority queue give the same tokens.
func TestMergeScanEqualsQueue(t *testing.T) {
	tk := testdataTokenizer(t)
	r := rand.New(rand.NewPCG(7, 8))
	letters := "etaoinshrdlu "
	e := &encoder{t: tk}
	for range 2000 {
		w := make([]byte, 1+r.IntN(120))
		for i := range w {
			w[i] = letters[r.IntN(len(letters))]
		}
		a := tk.model.mergeScan(e, tk.model.initial(nil, w))
		b := tk.model.mergeQueue(e, tk.model.initial(nil, w))
		if !slices.Equal(a, b) {
			t.Fatalf("%q: scan %v, queue %v", w, a, b)
		}
	}
}

// The cache does not change results, and concurrent use is safe.
func TestConcurrentAndCache(t *testing.T) {
	tk := testdataTokenizer(t)
	fresh, err := Load("testdata/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	fresh.model.cache = nil
	texts := Corpus()
	want := make([][]uint32, len(texts))
	for i, s := range texts {
		want[i] = encode(fresh, s)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				for i := range texts {
					j := (i + g + round) % len(texts)
					if got := encode(tk, texts[j]); !slices.Equal(got, want[j]) {
						t.Errorf("text %d differs", j)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
