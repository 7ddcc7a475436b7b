package tokenizer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// Split patterns of other released tokenizers, run by the generic path:
// Mistral Nemo's (Tekken) and GPT-4o's (o200k_base), both with the
// white-space lookahead tail.
const (
	tekkenPattern = `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// deepseekPattern is the last of DeepSeek V3's three Splits (after
	// \p{N}{1,3} and a run of CJK), with escapes inside a class.
	deepseekPattern = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
	o200kPattern    = `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

const pythonSplit = `
import json, sys, regex
req = json.load(sys.stdin)
def split(r, s):
    pieces, prev = [], 0
    for m in r.finditer(s):
        if m.start() > prev:
            pieces.append(s[prev:m.start()])
        pieces.append(m.group())
        prev = m.end()
    if prev < len(s):
        pieces.append(s[prev:])
    return pieces
out = []
for seq in req["sequences"]:
    rs = [regex.compile(p) for p in seq]
    res = []
    for s in req["texts"]:
        pieces = [s]
        for r in rs:
            pieces = [q for p in pieces for q in split(r, p)]
        res.append(pieces)
    out.append(res)
json.dump(out, sys.stdout)
`

// Python's regex module has lookahead, Unicode \s (White_Space, as
// Oniguruma's) and \p classes: the splits of the hand-written scanners and
// of the generic path must equal its. Skipped without python3 and regex.
func TestSplitMatchesPythonRegex(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	sequences := [][]string{
		{gpt2Pattern}, {llama3Pattern}, {qwen2Pattern}, {tekkenPattern}, {o200kPattern},
		{`\p{N}{1,3}`, "[一-龥\u3040-ゟ゠-ヿ]+", deepseekPattern}, // DeepSeek V3's
	}
	r := rand.New(rand.NewPCG(3, 4))
	var texts []string
	for _, c := range splitCases {
		if c.in != "a\xffb" {
			texts = append(texts, c.in)
		}
	}
	for range 800 {
		texts = append(texts, randomText(r, r.IntN(40)))
	}
	for range 200 {
		texts = append(texts, randomText(r, r.IntN(20))+"日本語、カタカナ12345"+randomText(r, r.IntN(20)))
	}
	req, _ := json.Marshal(map[string]any{"sequences": sequences, "texts": texts})
	cmd := exec.Command("python3", "-c", pythonSplit)
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if _, lookErr := exec.LookPath("python3"); lookErr != nil ||
		(err != nil && bytes.Contains(stderr.Bytes(), []byte("No module named"))) {
		t.Skip("python3 with the regex module is not available")
	}
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.Bytes())
	}
	var want [][][]string
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	for i, seq := range sequences {
		tk := sequenceTokenizer(t, seq)
		bad := 0
		for j, s := range texts {
			if got := prePieces(tk, s); !slices.Equal(got, want[i][j]) {
				t.Errorf("%s: %q: got %q, python %q", patternName(seq[len(seq)-1]), s, got, want[i][j])
				if bad++; bad > 5 {
					break
				}
			}
		}
	}
}

// sequenceTokenizer loads a tokenizer whose pre-tokenizer is a Sequence of
// Isolated Splits by patterns, then ByteLevel.
func sequenceTokenizer(t testing.TB, patterns []string) *Tokenizer {
	var steps []string
	for _, p := range patterns {
		b, _ := json.Marshal(p)
		steps = append(steps, `{"type": "Split", "pattern": {"Regex": `+string(b)+`}, "behavior": "Isolated", "invert": false}`)
	}
	steps = append(steps, `{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}`)
	return spec{pre: `{"type": "Sequence", "pretokenizers": [` + strings.Join(steps, ", ") + `]}`}.load(t)
}

// prePieces returns the words the pre-tokenizers of tk make of s.
func prePieces(tk *Tokenizer, s string) []string {
	var out []string
	saved := tk.steps
	steps := slices.Clone(saved)
	steps[len(steps)-1] = collectStep{func(p string) { out = append(out, p) }}
	tk.steps = steps
	defer func() { tk.steps = saved }()
	(&encoder{t: tk}).piece(0, []byte(s))
	return out
}
