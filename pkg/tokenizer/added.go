package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of added_tokens.
type addedToken struct {
	content                    string
	id                         uint32
	singleWord, lstrip, rstrip bool
	normalized, special        bool
}

// addedMatcher finds added tokens in a text as Hugging Face's
// AddedVocabulary::find_matches does: an Aho-Corasick search, leftmost then
// longest, non-overlapping; a single_word token that touches a word
// character is skipped (the search goes on after it); lstrip and rstrip
// widen a match over the white space beside it.
type addedMatcher struct {
	first [256]bool
	// edges maps node<<8 | byte to the child node; node 0 is the root.
	edges map[uint64]int32
	// term[node] is the index in toks of the token ending at node, or -1.
	term []int32
	toks []addedToken
}

func newAddedMatcher(toks []addedToken) *addedMatcher {
	if len(toks) == 0 {
		return nil
	}
	m := &addedMatcher{edges: make(map[uint64]int32), term: []int32{-1}, toks: toks}
	for i, t := range toks {
		node := int32(0)
		for j := 0; j < len(t.content); j++ {
			k := uint64(node)<<8 | uint64(t.content[j])
			child, ok := m.edges[k]
			if !ok {
				child = int32(len(m.term))
				m.term = append(m.term, -1)
				m.edges[k] = child
			}
			node = child
		}
		if m.term[node] < 0 { // of equal patterns the first wins
			m.term[node] = int32(i)
		}
		m.first[t.content[0]] = true
	}
	return m
}

// longestAt returns the end of the longest token starting at s[i] and its
// index in toks, or -1.
func (m *addedMatcher) longestAt(s []byte, i int) (int, int32) {
	node, end, tok := int32(0), -1, int32(-1)
	for j := i; j < len(s); j++ {
		child, ok := m.edges[uint64(node)<<8|uint64(s[j])]
		if !ok {
			break
		}
		node = child
		if t := m.term[node]; t >= 0 {
			end, tok = j+1, t
		}
	}
	return end, tok
}

// span is a piece of a text: an added token (id >= 0) or text (id -1).
type span struct {
	start, end int
	id         int64
}

// split appends to out the spans of s, covering it; token spans may overlap
// the text before them, as in Hugging Face, when rstrip or lstrip widened a
// match.
func (m *addedMatcher) split(s []byte, out []span) []span {
	startOffset := 0
	for pos := 0; pos < len(s); {
		i := pos
		end, tok := -1, int32(-1)
		for ; i < len(s); i++ {
			if m.first[s[i]] {
				if end, tok = m.longestAt(s, i); tok >= 0 {
					break
				}
			}
		}
		if tok < 0 {
			break
		}
		pos = end
		t := &m.toks[tok]
		start, stop := i, end
		if t.singleWord {
			if (start > 0 && endsWithWord(s[:start])) || (stop < len(s) && startsWithWord(s[stop:])) {
				continue
			}
		}
		if t.lstrip {
			start = max(spaceStartAtEnd(s[:start]), startOffset)
		}
		if t.rstrip {
			stop += spaceLenAtStart(s[stop:])
		}
		if startOffset < start {
			out = append(out, span{startOffset, start, -1})
		}
		out = append(out, span{start, stop, int64(t.id)})
		startOffset = stop
	}
	if startOffset < len(s) {
		out = append(out, span{startOffset, len(s), -1})
	}
	return out
}

// isWordRune reports whether r is matched by \w of Rust's regex crate:
// Alphabetic, M, Nd, Pc or Join_Control.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) ||
		unicode.In(r, unicode.Nd, unicode.Nl, unicode.Pc, unicode.Other_Alphabetic, unicode.Join_Control)
}

func endsWithWord(s []byte) bool {
	r, _ := utf8.DecodeLastRune(s)
	return r != utf8.RuneError && isWordRune(r)
}

func startsWithWord(s []byte) bool {
	r, _ := utf8.DecodeRune(s)
	return r != utf8.RuneError && isWordRune(r)
}

// spaceStartAtEnd returns where the white space that ends s starts.
func spaceStartAtEnd(s []byte) int {
	i := len(s)
	for i > 0 {
		r, w := utf8.DecodeLastRune(s[:i])
		if !unicode.IsSpace(r) || (r == utf8.RuneError && w == 1) {
			break
		}
		i -= w
	}
	return i
}

// spaceLenAtStart returns the length of the white space that starts s.
func spaceLenAtStart(s []byte) int {
	i := 0
	for i < len(s) {
		r, w := utf8.DecodeRune(s[i:])
		if !unicode.IsSpace(r) || (r == utf8.RuneError && w == 1) {
			break
		}
		i += w
	}
	return i
}
