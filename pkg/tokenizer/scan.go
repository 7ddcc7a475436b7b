package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Character classes of the split patterns. \s is Unicode White_Space (what
// Oniguruma's \s matches in Hugging Face tokenizers); \p{L} and \p{N} are the
// Unicode general categories L and N as Go's unicode package knows them. A
// byte that is not part of valid UTF-8 is one character of class other (like
// U+FFFD, which is So), so that any byte string is split, and encoded, losslessly.
const (
	clsOther   = iota // none of the below
	clsLetter         // \p{L}
	clsNumber         // \p{N}
	clsSpace          // \s other than \r and \n
	clsNewline        // \r or \n
)

var asciiClass [utf8.RuneSelf]uint8

func init() {
	for c := 0; c < utf8.RuneSelf; c++ {
		asciiClass[c] = slowClass(rune(c))
	}
}

func slowClass(r rune) uint8 {
	switch {
	case r == '\r' || r == '\n':
		return clsNewline
	case unicode.IsSpace(r): // White_Space: \t \v \f space U+0085 U+00A0 and Z
		return clsSpace
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	}
	return clsOther
}

// charAt returns the class and byte width of the character at s[i].
func charAt(s []byte, i int) (uint8, int) {
	if c := s[i]; c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, w := utf8.DecodeRune(s[i:])
	return slowClass(r), w
}

// isSpaceClass reports whether c is a class of \s.
func isSpaceClass(c uint8) bool { return c == clsSpace || c == clsNewline }

// scanClass returns the end of the run of characters of class c from s[i].
func scanClass(s []byte, i int, c uint8) int {
	for i < len(s) {
		if b := s[i]; b < utf8.RuneSelf {
			if asciiClass[b] != c {
				return i
			}
			i++
			continue
		}
		cc, w := charAt(s, i)
		if cc != c {
			return i
		}
		i += w
	}
	return i
}

// scanSpaceTail matches `\s+(?!\S)|\s+` at s[i], where s[i] is white space:
// the whole run of white space if it ends the text or is one character long,
// else the run but its last character (which the lookahead leaves for the
// next piece: " " + "word").
func scanSpaceTail(s []byte, i int) int {
	e, last := i, i
	for e < len(s) {
		c, w := charAt(s, e)
		if !isSpaceClass(c) {
			break
		}
		last = e
		e += w
	}
	if e == len(s) || last == i {
		return e
	}
	return last
}

// contraction returns the length of the contraction suffix (s, t, re, ve,
// m, ll, d) at the start of s, which follows an apostrophe, or 0. With
// fold, letters match case-insensitively as in (?i:...) (including ſ,
// U+017F, which folds to s).
func contraction(s []byte, fold bool) int {
	if len(s) == 0 {
		return 0
	}
	lower := func(b byte) byte {
		if fold && b >= 'A' && b <= 'Z' {
			return b + 'a' - 'A'
		}
		return b
	}
	switch lower(s[0]) {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if len(s) > 1 && lower(s[1]) == 'e' {
			return 2
		}
	case 'l':
		if len(s) > 1 && lower(s[1]) == 'l' {
			return 2
		}
	case 0xC5: // ſ is C5 BF
		if fold && len(s) > 1 && s[1] == 0xBF {
			return 2
		}
	}
	return 0
}

// The split patterns recognised by their text and run by a hand-written
// scanner (Go's regexp has no lookahead).
const (
	// gpt2Pattern is GPT-2's pattern, also the one of the ByteLevel
	// pre-tokenizer with use_regex.
	gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	// llama3Pattern is Llama 3's (tiktoken cl100k_base's).
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// qwen2Pattern is Qwen 2's, 2.5's and 3's: Llama 3's with one digit a piece.
	qwen2Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// scanGPT2 returns the end of the match of gpt2Pattern at s[i] (i < len(s)).
// Every character starts a match, so matches tile the text.
func scanGPT2(s []byte, i int) int {
	if s[i] == '\'' {
		if n := contraction(s[i+1:], false); n > 0 {
			return i + 1 + n
		}
	}
	c, w := charAt(s, i)
	j := i
	if s[i] == ' ' && i+1 < len(s) {
		// ` ?` takes the space if the alternative matches after it.
		if c2, w2 := charAt(s, i+1); c2 == clsLetter || c2 == clsNumber || c2 == clsOther {
			j, c, w = i+1, c2, w2
		}
	}
	switch c {
	case clsLetter, clsNumber, clsOther:
		return scanClass(s, j+w, c)
	}
	return scanSpaceTail(s, i)
}

// scanLlama3 returns the end of the match of llama3Pattern (maxDigits 3) or
// qwen2Pattern (maxDigits 1) at s[i] (i < len(s)). Every character starts a
// match.
func scanLlama3(s []byte, i, maxDigits int) int {
	if s[i] == '\'' {
		if n := contraction(s[i+1:], true); n > 0 {
			return i + 1 + n
		}
	}
	c, w := charAt(s, i)
	switch c {
	case clsLetter:
		return scanClass(s, i+w, clsLetter)
	case clsNumber:
		k := i + w
		for n := 1; n < maxDigits && k < len(s); n++ {
			c2, w2 := charAt(s, k)
			if c2 != clsNumber {
				break
			}
			k += w2
		}
		return k
	case clsOther, clsSpace:
		// [^\r\n\p{L}\p{N}]?\p{L}+
		if i+w < len(s) {
			if c2, w2 := charAt(s, i+w); c2 == clsLetter {
				return scanClass(s, i+w+w2, clsLetter)
			}
		}
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	j, cj, wj := i, c, w
	if s[i] == ' ' && i+1 < len(s) {
		if c2, w2 := charAt(s, i+1); c2 == clsOther {
			j, cj, wj = i+1, c2, w2
		}
	}
	if cj == clsOther {
		k := scanClass(s, j+wj, clsOther)
		for k < len(s) && (s[k] == '\r' || s[k] == '\n') {
			k++
		}
		return k
	}
	// White space. `\s*[\r\n]+` ends after the run's last newline, if any;
	// else `\s+(?!\S)|\s+`.
	e, last, nl := i, i, -1
	for e < len(s) {
		c2, w2 := charAt(s, e)
		if !isSpaceClass(c2) {
			break
		}
		if c2 == clsNewline {
			nl = e
		}
		last = e
		e += w2
	}
	if nl >= 0 {
		return nl + 1
	}
	if e == len(s) || last == i {
		return e
	}
	return last
}
