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
	bad := func(what string) (string, error) {
		return "", fmt.Errorf("regex %q: %s not supported", p, what)
	}
	var b strings.Builder
	inClass := false
	for i := 0; i < len(p); {
		c := p[i]
		switch {
		case c == '\\':
			if i+1 >= len(p) {
				return bad("trailing backslash")
			}
			e := p[i+1]
			switch e {
			case 's':
				if inClass {
					b.WriteString(spaceBody)
				} else {
					b.WriteString("[" + spaceBody + "]")
				}
			case 'S':
				if inClass {
					return bad(`\S inside a class`)
				}
				b.WriteString("[^" + spaceBody + "]")
			case 'w':
				if inClass {
					b.WriteString(wordBody)
				} else {
					b.WriteString("[" + wordBody + "]")
				}
			case 'W':
				if inClass {
					return bad(`\W inside a class`)
				}
				b.WriteString("[^" + wordBody + "]")
			case 'd':
				b.WriteString(`\p{Nd}`)
			case 'D':
				b.WriteString(`\P{Nd}`)
			case 'p', 'P', 'x':
				// \p{..}, \pL, \x{..}, \xHH: copied; Go rejects what it lacks.
				j := i + 2
				if j < len(p) && p[j] == '{' {
					k := strings.IndexByte(p[j:], '}')
					if k < 0 {
						return bad("unterminated " + `\` + string(e))
					}
					j += k + 1
				} else if e == 'x' {
					j += 2
				} else {
					j++
				}
				if j > len(p) {
					return bad("truncated escape")
				}
				b.WriteString(p[i:j])
				i = j
				continue
			case 't', 'n', 'r', 'f', 'v', 'a':
				b.WriteString(p[i : i+2])
			default:
				if e >= utf8.RuneSelf || (e >= '0' && e <= '9') ||
					(e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') {
					return bad(`escape \` + string(e))
				}
				b.WriteString(p[i : i+2]) // an escaped punctuation character
			}
			i += 2
			continue
		case inClass && c == '[':
			return bad("a nested class or POSIX bracket")
		case inClass && c == '&' && i+1 < len(p) && p[i+1] == '&':
			return bad("class intersection")
		case inClass && c == ']':
			inClass = false
		case !inClass && c == '[':
			inClass = true
			b.WriteByte(c)
			i++
			if i < len(p) && p[i] == '^' {
				b.WriteByte('^')
				i++
			}
			if i < len(p) && p[i] == ']' { // a leading ] is literal
				b.WriteString(`\]`)
				i++
			}
			continue
		case !inClass && c == '(' && i+1 < len(p) && p[i+1] == '?':
			// Groups with flags: only i (and its negation) mean the same.
			j := i + 2
			for j < len(p) && (p[j] == 'i' || p[j] == '-') {
				j++
			}
			if j < len(p) && j > i+2 && p[j] != ':' && p[j] != ')' {
				return bad("inline flag")
			}
			if j == i+2 && j < len(p) && strings.IndexByte("imsx", p[j]) >= 0 {
				return bad("inline flag")
			}
		case !inClass && c == '{' && i+1 < len(p) && p[i+1] == ',':
			return bad("{,n}")
		}
		b.WriteByte(c)
		i++
	}
	if inClass {
		return bad("unterminated class")
	}
	return b.String(), nil
}
