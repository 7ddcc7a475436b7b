package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// The expected pieces were checked by hand and against Python's regex
// module, which has lookahead (see TestSplitMatchesPythonRegex).
var splitCases = []struct {
	pattern string
	in      string
	want    []string
}{
	{llama3Pattern, "Hello world", []string{"Hello", " world"}},
	{llama3Pattern, "a  b", []string{"a", " ", " b"}},
	{llama3Pattern, "\n\n", []string{"\n\n"}},
	{llama3Pattern, "trailing   ", []string{"trailing", "   "}},
	{llama3Pattern, "x  ", []string{"x", "  "}},
	{llama3Pattern, "x \n y", []string{"x", " \n", " y"}},
	{llama3Pattern, "  \n\n  x", []string{"  \n\n", " ", " x"}},
	{llama3Pattern, "I'm you're THEY'RE", []string{"I", "'m", " you", "'re", " THEY", "'RE"}},
	{llama3Pattern, "it's 'sup I'M", []string{"it", "'s", " '", "sup", " I", "'M"}},
	{llama3Pattern, "'sup", []string{"'s", "up"}},
	{llama3Pattern, "'\u017f", []string{"'\u017f"}}, // ſ folds to s
	{llama3Pattern, "1234567", []string{"123", "456", "7"}},
	{llama3Pattern, "abc123def", []string{"abc", "123", "def"}},
	{llama3Pattern, "$1,000.50!", []string{"$", "1", ",", "000", ".", "50", "!"}},
	{llama3Pattern, " 123", []string{" ", "123"}},
	{llama3Pattern, "  hello", []string{" ", " hello"}},
	{llama3Pattern, "(hello)", []string{"(hello", ")"}},
	{llama3Pattern, "a...\n\nb", []string{"a", "...\n\n", "b"}},
	{llama3Pattern, "é café", []string{"é", " café"}},
	{llama3Pattern, "日本語のテキスト", []string{"日本語のテキスト"}},
	{llama3Pattern, "tab\tsep", []string{"tab", "\tsep"}},
	{llama3Pattern, "x\r\ny", []string{"x", "\r\n", "y"}},
	{llama3Pattern, "?!\n", []string{"?!\n"}},
	{llama3Pattern, "  ?!", []string{" ", " ?!"}},
	{llama3Pattern, "\u00a0word", []string{"\u00a0word"}},
	{llama3Pattern, "a \u2003b", []string{"a", " ", "\u2003b"}},
	{llama3Pattern, "hello\n\nworld", []string{"hello", "\n\n", "world"}},
	{llama3Pattern, "²½Ⅻ٣", []string{"²½Ⅻ", "٣"}},
	{llama3Pattern, "a\xffb", []string{"a", "\xffb"}}, // an invalid byte is "other"
	{qwen2Pattern, "1234567", []string{"1", "2", "3", "4", "5", "6", "7"}},
	{qwen2Pattern, "3.14 abc", []string{"3", ".", "1", "4", " abc"}},
	{gpt2Pattern, "Hello world", []string{"Hello", " world"}},
	{gpt2Pattern, "a  b", []string{"a", " ", " b"}},
	{gpt2Pattern, "a \u2003b", []string{"a", " ", "\u2003", "b"}},
	{gpt2Pattern, "trailing   ", []string{"trailing", "   "}},
	{gpt2Pattern, "I'm you're THEY'RE", []string{"I", "'m", " you", "'re", " THEY", "'", "RE"}},
	{gpt2Pattern, "'\u017f", []string{"'", "\u017f"}},
	{gpt2Pattern, "1234567 123", []string{"1234567", " 123"}},
	{gpt2Pattern, "(hello)", []string{"(", "hello", ")"}},
	{gpt2Pattern, "hello\n\nworld", []string{"hello", "\n", "\n", "world"}},
	{gpt2Pattern, "x\r\ny", []string{"x", "\r", "\n", "y"}},
	{gpt2Pattern, "  \n\n  x", []string{"  \n\n ", " x"}},
	{gpt2Pattern, "\u00a0word", []string{"\u00a0", "word"}},
}

func TestSplitHandChecked(t *testing.T) {
	for _, c := range splitCases {
		sp, err := newSplitter(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := pieces(sp, c.in); !slices.Equal(got, c.want) {
			t.Errorf("%s: %q: got %q, want %q", patternName(c.pattern), c.in, got, c.want)
		}
		// The generic path (Go's regexp and the white-space tail) agrees.
		if got := pieces(genericSplitter(t, c.pattern), c.in); !slices.Equal(got, c.want) {
			t.Errorf("%s (regexp): %q: got %q, want %q", patternName(c.pattern), c.in, got, c.want)
		}
	}
}

func patternName(p string) string {
	switch p {
	case gpt2Pattern:
		return "gpt2"
	case llama3Pattern:
		return "llama3"
	case qwen2Pattern:
		return "qwen2"
	}
	return p
}

// genericSplitter compiles a pattern by the fallback path, even a
// well-known one (the pattern is made distinct by a no-op group).
func genericSplitter(t testing.TB, p string) splitter {
	t.Helper()
	sp, err := newSplitter("(?:)" + p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if _, ok := sp.(*regexSplitter); !ok {
		t.Fatalf("%s: not the generic splitter", p)
	}
	return sp
}

// The hand-written scanners and the generic regexp path agree on random
// text and random bytes.
func TestScannersMatchRegexp(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range []string{gpt2Pattern, llama3Pattern, qwen2Pattern} {
		fast, err := newSplitter(p)
		if err != nil {
			t.Fatal(err)
		}
		slow := genericSplitter(t, p)
		for i := range 3000 {
			var s string
			if i%3 == 0 {
				s = string(randomBytes(r, r.IntN(30)))
			} else {
				s = randomText(r, r.IntN(30))
			}
			a, b := pieces(fast, s), pieces(slow, s)
			if !slices.Equal(a, b) {
				t.Fatalf("%s: %q: scanner %q, regexp %q", patternName(p), s, a, b)
			}
			if strings.Join(a, "") != s {
				t.Fatalf("%s: %q: pieces %q do not cover the text", patternName(p), s, a)
			}
		}
	}
}

func TestSplitterRefusals(t *testing.T) {
	for _, p := range []string{
		`(?=a)b`,            // lookahead in the part Go runs
		`\bfoo`,             // word boundary
		`^a`,                // anchor
		`a$`,                // anchor
		`[[:alpha:]]+`,      // POSIX bracket
		`a{,3}`,             // {,n}
		`(?m:a)`,            // flag whose meaning differs
		`(?x) a`,            // extended mode
		`a*`,                // matches the empty string
		`\s*|\s+(?!\S)|\s+`, // P matches the empty string
		`[\S]`,              // \S inside a class
		`\h+`,               // Oniguruma's hex digit
		`a++`,               // possessive
		`(a)\1`,             // back reference
		`[a&&b]`,            // intersection
	} {
		if _, err := newSplitter(p); err == nil {
			t.Errorf("%q: no error", p)
		}
	}
	// Accepted, with Oniguruma's meanings.
	for p, want := range map[string][]string{
		`\p{N}{1,3}`:           {"a ", "123", "4", " b"},
		`\s+`:                  {"a", " ", "1234", " ", "b"},
		`\w+`:                  {"a", " ", "1234", " ", "b"},
		`\d`:                   {"a ", "1", "2", "3", "4", " b"},
		`[^\s\d]+|\s+(?!\S)`:   {"a", " 1234 ", "b"}, // a lone space before \S is left
		`(?i:A)|\s+(?!\S)|\s+`: {"a", " ", "1234", " ", "b"},
	} {
		sp, err := newSplitter(p)
		if err != nil {
			t.Errorf("%q: %v", p, err)
			continue
		}
		if got := pieces(sp, "a 1234 b"); !slices.Equal(got, want) {
			t.Errorf("%q: got %q, want %q", p, got, want)
		}
	}
	// Go's \s is ASCII; the translation makes it Unicode's.
	sp, err := newSplitter(`\s+`)
	if err != nil {
		t.Fatal(err)
	}
	if got := pieces(sp, "a\u00a0\u2003\u000bb"); !slices.Equal(got, []string{"a", "\u00a0\u2003\u000b", "b"}) {
		t.Errorf(`\s: got %q`, got)
	}
}
