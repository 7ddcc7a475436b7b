package tokenizer

// A preStep is one pre-tokenizer: it splits a piece and hands each of its
// pieces to the next step (e.piece(level+1, ...)).
type preStep interface {
	run(e *encoder, level int, p []byte)
}

// Split delimiter behaviours (SplitDelimiterBehavior).
const (
	behaviorRemoved = iota
	behaviorIsolated
	behaviorMergedWithPrevious
	behaviorMergedWithNext
	behaviorContiguous
)

var behaviors = map[string]int{
	"Removed":            behaviorRemoved,
	"Isolated":           behaviorIsolated,
	"MergedWithPrevious": behaviorMergedWithPrevious,
	"MergedWithNext":     behaviorMergedWithNext,
	"Contiguous":         behaviorContiguous,
}

// splitStep is the Split pre-tokenizer.
type splitStep struct {
	sp       splitter
	behavior int
	invert   bool
}

// seg is a piece of a text and whether the pattern matched it (after
// invert).
type seg struct {
	start, end int
	match      bool
}

func (st *splitStep) run(e *encoder, level int, p []byte) {
	// The match state lives in the encoder: a stack of one per level.
	for len(e.states) <= level {
		e.states = append(e.states, matchState{})
	}
	if st.behavior == behaviorIsolated || st.behavior == behaviorRemoved {
		st.runDirect(e, level, p)
		return
	}
	for _, s := range st.merge(st.segments(p)) {
		e.piece(level+1, p[s.start:s.end])
	}
}

// runDirect splits p with the Isolated or Removed behaviour, handing each
// piece on as it is found.
func (st *splitStep) runDirect(e *encoder, level int, p []byte) {
	keepText := st.behavior == behaviorIsolated || !st.invert
	keepMatch := st.behavior == behaviorIsolated || st.invert
	e.states[level] = matchState{}
	pos := 0
	for pos < len(p) {
		ms, me := st.sp.next(p, pos, &e.states[level])
		if ms < 0 {
			break
		}
		if ms > pos && keepText {
			e.piece(level+1, p[pos:ms])
		}
		if keepMatch {
			e.piece(level+1, p[ms:me])
		}
		pos = me
	}
	if pos < len(p) && keepText {
		e.piece(level+1, p[pos:])
	}
}

// segments cuts p into the pattern's matches and the text between them.
func (st *splitStep) segments(p []byte) []seg {
	var segs []seg
	var state matchState
	pos := 0
	for pos < len(p) {
		ms, me := st.sp.next(p, pos, &state)
		if ms < 0 {
			break
		}
		if ms > pos {
			segs = append(segs, seg{pos, ms, st.invert})
		}
		segs = append(segs, seg{ms, me, !st.invert})
		pos = me
	}
	if pos < len(p) {
		segs = append(segs, seg{pos, len(p), st.invert})
	}
	return segs
}

// merge joins segments by one of the merging behaviours, as Hugging Face's
// NormalizedString::split.
func (st *splitStep) merge(segs []seg) []seg {
	var out []seg
	prev := false
	switch st.behavior {
	case behaviorContiguous:
		for _, s := range segs {
			if s.match == prev && len(out) > 0 {
				out[len(out)-1].end = s.end
			} else {
				out = append(out, s)
			}
			prev = s.match
		}
	case behaviorMergedWithPrevious:
		for _, s := range segs {
			if s.match && !prev && len(out) > 0 {
				out[len(out)-1].end = s.end
			} else {
				out = append(out, s)
			}
			prev = s.match
		}
	case behaviorMergedWithNext:
		for i := len(segs) - 1; i >= 0; i-- {
			s := segs[i]
			if s.match && !prev && len(out) > 0 {
				out[len(out)-1].start = s.start
			} else {
				out = append(out, s)
			}
			prev = s.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out
}

// byteLevelStep is the ByteLevel pre-tokenizer, the last step: it may
// prepend a space and split by GPT-2's pattern; its mapping of bytes to
// runes is implicit (the model works on bytes).
type byteLevelStep struct {
	addPrefixSpace, useRegex bool
}

func (b *byteLevelStep) run(e *encoder, level int, p []byte) {
	if b.addPrefixSpace && p[0] != ' ' {
		q := make([]byte, 1+len(p))
		q[0] = ' '
		copy(q[1:], p)
		p = q
	}
	if !b.useRegex {
		e.piece(level+1, p)
		return
	}
	for pos := 0; pos < len(p); {
		end := scanGPT2(p, pos)
		e.piece(level+1, p[pos:end])
		pos = end
	}
}
