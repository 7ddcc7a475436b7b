package tokenizer

import (
	"bytes"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
	"unicode/utf8"
)

// A splitter finds the pieces a Split pre-tokenizer matches.
type splitter interface {
	// next returns the leftmost match in s at or after pos, or start -1.
	// Matches are never empty. st carries state between calls on one s.
	next(s []byte, pos int, st *matchState) (start, end int)
}

// matchState caches a regexp match between calls of next on one text.
type matchState struct {
	valid      bool
	start, end int // -1 when there is no match from the cached position on
}

type gpt2Splitter struct{}

func (gpt2Splitter) next(s []byte, pos int, _ *matchState) (int, int) {
	return pos, scanGPT2(s, pos)
}

type llama3Splitter struct{ maxDigits int }

func (l llama3Splitter) next(s []byte, pos int, _ *matchState) (int, int) {
	return pos, scanLlama3(s, pos, l.maxDigits)
}

// literalSplitter matches a fixed, non-empty string (a Split pattern
// {"String": ...}).
type literalSplitter struct{ lit []byte }

func (l literalSplitter) next(s []byte, pos int, _ *matchState) (int, int) {
	i := bytes.Index(s[pos:], l.lit)
	if i < 0 {
		return -1, -1
	}
	return pos + i, pos + i + len(l.lit)
}

// Trailing alternatives of a split pattern handled outside Go's regexp,
// which has no lookahead: `\s+(?!\S)|\s+` (spaceTailFull) or `\s+(?!\S)`
// alone (spaceTailLookahead).
const (
	spaceTailNone = iota
	spaceTailLookahead
	spaceTailFull
)

// regexSplitter runs a pattern `P|\s+(?!\S)|\s+` (or `P|\s+(?!\S)`, or P) as
// Oniguruma would: at each position, P first (by Go's regexp, whose
// leftmost-first semantics are Perl's), then the white-space alternatives.
type regexSplitter struct {
	re    *regexp.Regexp // P; nil if the pattern is only the white-space tail
	space int
}

func (r *regexSplitter) next(s []byte, pos int, st *matchState) (int, int) {
	// The leftmost match of P from pos, cached: it stays the leftmost while
	// pos does not pass its start (P has no assertions, so a match depends
	// only on the text from its start).
	if r.re != nil && (!st.valid || (st.start >= 0 && st.start < pos)) {
		st.valid = true
		st.start, st.end = -1, -1
		if loc := r.re.FindIndex(s[pos:]); loc != nil {
			st.start, st.end = pos+loc[0], pos+loc[1]
		}
	}
	limit := len(s)
	if r.re != nil && st.start >= 0 {
		limit = st.start
	}
	if r.space != spaceTailNone {
		// P fails at every position before limit: the white-space
		// alternatives may match there.
		for k := pos; k < limit; {
			c, w := charAt(s, k)
			if isSpaceClass(c) {
				if e := r.spaceAt(s, k); e > k {
					return k, e
				}
			}
			k += w
		}
	}
	if r.re == nil || st.start < 0 {
		return -1, -1
	}
	return st.start, st.end
}

// spaceAt matches the white-space alternatives at s[k], which is white space.
func (r *regexSplitter) spaceAt(s []byte, k int) int {
	e, last := k, k
	for e < len(s) {
		c, w := charAt(s, e)
		if !isSpaceClass(c) {
			break
		}
		last = e
		e += w
	}
	switch {
	case e == len(s):
		return e
	case last > k:
		return last
	case r.space == spaceTailFull:
		return e
	}
	return k
}

// Oniguruma's Unicode \s and \w as Go class bodies.
const (
	spaceBody = `\t\n\x0B\f\r\x{85}\p{Z}`
	wordBody  = `\p{L}\p{M}\p{Nd}\p{Pc}`
)

// newSplitter returns the splitter of a Split regex pattern.
func newSplitter(pattern string) (splitter, error) {
	switch pattern {
	case gpt2Pattern:
		return gpt2Splitter{}, nil
	case llama3Pattern:
		return llama3Splitter{maxDigits: 3}, nil
	case qwen2Pattern:
		return llama3Splitter{maxDigits: 1}, nil
	}
	p, space := pattern, spaceTailNone
	for _, t := range []struct {
		suffix string
		space  int
	}{{`\s+(?!\S)|\s+`, spaceTailFull}, {`\s+(?!\S)`, spaceTailLookahead}} {
		if p == t.suffix {
			return &regexSplitter{space: t.space}, nil
		}
		if strings.HasSuffix(p, "|"+t.suffix) {
			p, space = strings.TrimSuffix(p, "|"+t.suffix), t.space
			break
		}
	}
	goPattern, err := translateRegex(p)
	if err != nil {
		return nil, err
	}
	re, err := regexp.Compile(goPattern)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", pattern, err)
	}
	prog, err := syntax.Parse(goPattern, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", pattern, err)
	}
	if hasAssertion(prog) {
		return nil, fmt.Errorf("regex %q: anchors and word boundaries are not supported", pattern)
	}
	if re.Match(nil) {
		return nil, fmt.Errorf("regex %q: a pattern that can match the empty string is not supported", pattern)
	}
	return &regexSplitter{re: re, space: space}, nil
}

func hasAssertion(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText,
		syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	}
	for _, sub := range re.Sub {
		if hasAssertion(sub) {
			return true
		}
	}
	return false
}

// translateRegex rewrites an Oniguruma pattern (as Hugging Face tokenizers
// compiles it) into Go syntax with the same meaning, or refuses it: \s, \w
// and \d become their Unicode classes (Go's are ASCII); constructs whose
// meaning differs between the two (POSIX brackets, nested classes, class
// intersections, inline flags other than i, {,n}, \b, \h, \Q, back
// references) are refused. Lookaround fails to compile in Go and is refused
// there.
func translateRegex(p string) (string, error) {
	t := &regexTranslator{p: p}
	for i := 0; i < len(p); {
		var err error
		if i, err = t.step(i); err != nil {
			return "", err
		}
	}
	if t.inClass {
		return "", t.bad("unterminated class")
	}
	return t.b.String(), nil
}

// regexTranslator is translateRegex's state: the output so far and whether
// it is inside a bracketed class.
type regexTranslator struct {
	p       string
	b       strings.Builder
	inClass bool
}

// bad is the error refusing a construct of the pattern.
func (t *regexTranslator) bad(what string) error {
	return fmt.Errorf("regex %q: %s not supported", t.p, what)
}

// step translates the construct at p[i] and returns where the next begins.
func (t *regexTranslator) step(i int) (int, error) {
	p := t.p
	c := p[i]
	switch {
	case c == '\\':
		return t.escape(i)
	case t.inClass && c == '[':
		return 0, t.bad("a nested class or POSIX bracket")
	case t.inClass && c == '&' && i+1 < len(p) && p[i+1] == '&':
		return 0, t.bad("class intersection")
	case t.inClass && c == ']':
		t.inClass = false
	case !t.inClass && c == '[':
		return t.openClass(i), nil
	case !t.inClass && c == '(' && i+1 < len(p) && p[i+1] == '?':
		if err := t.checkGroupFlags(i); err != nil {
			return 0, err
		}
	case !t.inClass && c == '{' && i+1 < len(p) && p[i+1] == ',':
		return 0, t.bad("{,n}")
	}
	t.b.WriteByte(c)
	return i + 1, nil
}

// openClass copies the opening of a class at p[i] ('[', a negation, and a
// leading ']', which is literal) and returns where its body begins.
func (t *regexTranslator) openClass(i int) int {
	p := t.p
	t.inClass = true
	t.b.WriteByte('[')
	i++
	if i < len(p) && p[i] == '^' {
		t.b.WriteByte('^')
		i++
	}
	if i < len(p) && p[i] == ']' { // a leading ] is literal
		t.b.WriteString(`\]`)
		i++
	}
	return i
}

// checkGroupFlags refuses a group at p[i] ("(?") with flags other than i
// (and its negation), which mean the same in both syntaxes.
func (t *regexTranslator) checkGroupFlags(i int) error {
	p := t.p
	j := i + 2
	for j < len(p) && (p[j] == 'i' || p[j] == '-') {
		j++
	}
	if j < len(p) && j > i+2 && p[j] != ':' && p[j] != ')' {
		return t.bad("inline flag")
	}
	if j == i+2 && j < len(p) && strings.IndexByte("imsx", p[j]) >= 0 {
		return t.bad("inline flag")
	}
	return nil
}

// escape translates the escape at p[i] and returns where the next
// construct begins.
func (t *regexTranslator) escape(i int) (int, error) {
	p := t.p
	if i+1 >= len(p) {
		return 0, t.bad("trailing backslash")
	}
	e := p[i+1]
	switch e {
	case 's', 'S', 'w', 'W':
		if err := t.shorthand(e); err != nil {
			return 0, err
		}
	case 'd':
		t.b.WriteString(`\p{Nd}`)
	case 'D':
		t.b.WriteString(`\P{Nd}`)
	case 'p', 'P', 'x':
		return t.copyEscape(i)
	case 't', 'n', 'r', 'f', 'v', 'a':
		t.b.WriteString(p[i : i+2])
	default:
		if e >= utf8.RuneSelf || (e >= '0' && e <= '9') ||
			(e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') {
			return 0, t.bad(`escape \` + string(e))
		}
		t.b.WriteString(p[i : i+2]) // an escaped punctuation character
	}
	return i + 2, nil
}

// shorthand writes \s, \S, \w or \W as its Unicode class; the negated ones
// are refused inside a class.
func (t *regexTranslator) shorthand(e byte) error {
	body := spaceBody
	if e == 'w' || e == 'W' {
		body = wordBody
	}
	switch {
	case (e == 's' || e == 'w') && t.inClass:
		t.b.WriteString(body)
	case e == 's' || e == 'w':
		t.b.WriteString("[" + body + "]")
	case t.inClass:
		return t.bad(`\` + string(e) + ` inside a class`)
	default:
		t.b.WriteString("[^" + body + "]")
	}
	return nil
}

// copyEscape copies \p{..}, \pL, \x{..} or \xHH at p[i] as it is (Go
// rejects what it lacks) and returns where the next construct begins.
func (t *regexTranslator) copyEscape(i int) (int, error) {
	p := t.p
	e := p[i+1]
	j := i + 2
	if j < len(p) && p[j] == '{' {
		k := strings.IndexByte(p[j:], '}')
		if k < 0 {
			return 0, t.bad("unterminated " + `\` + string(e))
		}
		j += k + 1
	} else if e == 'x' {
		j += 2
	} else {
		j++
	}
	if j > len(p) {
		return 0, t.bad("truncated escape")
	}
	t.b.WriteString(p[i:j])
	return j, nil
}
