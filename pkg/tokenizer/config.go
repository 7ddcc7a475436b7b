package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// object is a JSON object with its fields kept raw; keys are matched
// exactly, as serde does (encoding/json's struct matching ignores case), and
// of repeated keys the last wins, as in serde's visitors.
type object map[string]json.RawMessage

func errf(field, format string, args ...any) error {
	return fmt.Errorf("tokenizer.json: %s %s", field, fmt.Sprintf(format, args...))
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// decodeObject parses raw as an object.
func decodeObject(field string, raw json.RawMessage) (object, error) {
	var o object
	if err := json.Unmarshal(raw, &o); err != nil || o == nil {
		return nil, errf(field, "not an object")
	}
	return o, nil
}

// get decodes the field key of o into v; ok is false if it is absent or
// null.
func (o object) get(field, key string, v any) (ok bool, err error) {
	raw, present := o[key]
	if !present || isNull(raw) {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, errf(field+"."+key, "%s", jsonErr(err))
	}
	return true, nil
}

func jsonErr(err error) string {
	if te, ok := err.(*json.UnmarshalTypeError); ok && te.Type != nil {
		return fmt.Sprintf("wrong type (%s, want %s)", te.Value, te.Type)
	}
	return err.Error()
}

// typeOf returns the "type" field of o.
func (o object) typeOf(field string) (string, error) {
	var t string
	ok, err := o.get(field, "type", &t)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", errf(field+".type", "missing")
	}
	return t, nil
}

func parse(b []byte) (*Tokenizer, error) {
	top, err := decodeObject("top level", b)
	if err != nil {
		return nil, err
	}
	var version string
	if _, err := top.get("tokenizer.json", "version", &version); err != nil {
		return nil, err
	}
	if _, ok := top["version"]; ok && version != "1.0" {
		return nil, errf("version", "%q not supported (only \"1.0\")", version)
	}
	for _, f := range []string{"truncation", "padding"} {
		if !isNull(top[f]) {
			return nil, errf(f, "not supported (must be null: it changes the ids)")
		}
	}
	t := &Tokenizer{}
	if t.nfc, err = parseNormalizer(top["normalizer"]); err != nil {
		return nil, err
	}
	if t.steps, err = parsePreTokenizer(top["pre_tokenizer"]); err != nil {
		return nil, err
	}
	// post_processor and decoder do not change the ids of
	// encode(add_special_tokens=False); they are not read.
	vocab, err := parseModel(top["model"], &t.model)
	if err != nil {
		return nil, err
	}
	maxID := int64(-1)
	t.decode = make(map[uint32]string, len(vocab))
	for s, id := range vocab {
		maxID = max(maxID, int64(id))
		d, ok := byteLevelDecode(s)
		if !ok {
			d = []byte(s)
		}
		// Of two tokens with one id, keep one whatever the map order.
		if old, dup := t.decode[id]; !dup || string(d) < old {
			t.decode[id] = string(d)
		}
	}
	added, err := parseAddedTokens(top["added_tokens"], vocab)
	if err != nil {
		return nil, err
	}
	var raw, normalized []addedToken
	for _, a := range added {
		maxID = max(maxID, int64(a.id))
		t.decode[a.id] = a.content
		if a.normalized {
			if t.nfc {
				a.content = string(nfc([]byte(a.content)))
			}
			normalized = append(normalized, a)
		} else {
			raw = append(raw, a)
		}
	}
	t.added, t.addedNorm = newAddedMatcher(raw), newAddedMatcher(normalized)
	t.vocabSize = int(maxID + 1)
	t.model.cache = newWordCache()
	return t, nil
}

// parseNormalizer accepts null, NFC, and a Sequence of NFCs; it reports
// whether the text is NFC-normalized.
func parseNormalizer(raw json.RawMessage) (bool, error) {
	if isNull(raw) {
		return false, nil
	}
	o, err := decodeObject("normalizer", raw)
	if err != nil {
		return false, err
	}
	typ, err := o.typeOf("normalizer")
	if err != nil {
		return false, err
	}
	switch typ {
	case "NFC":
		return true, nil
	case "Sequence":
		var list []json.RawMessage
		if ok, err := o.get("normalizer", "normalizers", &list); err != nil || !ok {
			return false, errf("normalizer.normalizers", "missing or not a list")
		}
		nfc := false
		for i, item := range list {
			field := fmt.Sprintf("normalizer.normalizers[%d]", i)
			io, err := decodeObject(field, item)
			if err != nil {
				return false, err
			}
			typ, err := io.typeOf(field)
			if err != nil {
				return false, err
			}
			if typ != "NFC" {
				return false, errf(field+".type", "%q not supported (only NFC)", typ)
			}
			nfc = true
		}
		return nfc, nil
	}
	return false, errf("normalizer.type", "%q not supported (only null, NFC)", typ)
}

// parsePreTokenizer accepts ByteLevel, or a Sequence of Splits ending with
// one ByteLevel.
func parsePreTokenizer(raw json.RawMessage) ([]preStep, error) {
	if isNull(raw) {
		return nil, errf("pre_tokenizer", "null not supported (a byte-level BPE needs ByteLevel)")
	}
	o, err := decodeObject("pre_tokenizer", raw)
	if err != nil {
		return nil, err
	}
	typ, err := o.typeOf("pre_tokenizer")
	if err != nil {
		return nil, err
	}
	switch typ {
	case "ByteLevel":
		s, err := parseByteLevel("pre_tokenizer", o)
		if err != nil {
			return nil, err
		}
		return []preStep{s}, nil
	case "Sequence":
	default:
		return nil, errf("pre_tokenizer.type", "%q not supported (only ByteLevel, Sequence of Split and ByteLevel)", typ)
	}
	var list []json.RawMessage
	if ok, err := o.get("pre_tokenizer", "pretokenizers", &list); err != nil || !ok {
		return nil, errf("pre_tokenizer.pretokenizers", "missing or not a list")
	}
	var steps []preStep
	for i, item := range list {
		field := fmt.Sprintf("pre_tokenizer.pretokenizers[%d]", i)
		io, err := decodeObject(field, item)
		if err != nil {
			return nil, err
		}
		typ, err := io.typeOf(field)
		if err != nil {
			return nil, err
		}
		last := i == len(list)-1
		switch {
		case typ == "Split" && !last:
			s, err := parseSplit(field, io)
			if err != nil {
				return nil, err
			}
			steps = append(steps, s)
		case typ == "ByteLevel" && last:
			s, err := parseByteLevel(field, io)
			if err != nil {
				return nil, err
			}
			steps = append(steps, s)
		case typ == "Split" || typ == "ByteLevel":
			return nil, errf(field, "%s not supported here (Splits, then one ByteLevel last)", typ)
		default:
			return nil, errf(field+".type", "%q not supported (only Split, ByteLevel)", typ)
		}
	}
	if len(steps) == 0 {
		return nil, errf("pre_tokenizer.pretokenizers", "empty (a byte-level BPE needs ByteLevel)")
	}
	return steps, nil
}

func parseByteLevel(field string, o object) (*byteLevelStep, error) {
	s := &byteLevelStep{useRegex: true}
	var prefix, regex bool
	ok, err := o.get(field, "add_prefix_space", &prefix)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errf(field+".add_prefix_space", "missing")
	}
	s.addPrefixSpace = prefix
	if ok, err := o.get(field, "use_regex", &regex); err != nil {
		return nil, err
	} else if ok {
		s.useRegex = regex
	}
	return s, nil
}

func parseSplit(field string, o object) (*splitStep, error) {
	var pattern map[string]string
	if ok, err := o.get(field, "pattern", &pattern); err != nil || !ok || len(pattern) != 1 {
		return nil, errf(field+".pattern", `missing or not {"Regex": ...} or {"String": ...}`)
	}
	s := &splitStep{}
	if re, ok := pattern["Regex"]; ok {
		sp, err := newSplitter(re)
		if err != nil {
			return nil, errf(field+".pattern", "%v", err)
		}
		s.sp = sp
	} else if lit, ok := pattern["String"]; ok {
		if lit == "" {
			return nil, errf(field+".pattern.String", "empty")
		}
		s.sp = literalSplitter{lit: []byte(lit)}
	} else {
		return nil, errf(field+".pattern", `not {"Regex": ...} or {"String": ...}`)
	}
	var behavior string
	if ok, err := o.get(field, "behavior", &behavior); err != nil || !ok {
		return nil, errf(field+".behavior", "missing or not a string")
	}
	b, ok := behaviors[behavior]
	if !ok {
		return nil, errf(field+".behavior", "%q not supported", behavior)
	}
	s.behavior = b
	if ok, err := o.get(field, "invert", &s.invert); err != nil || !ok {
		return nil, errf(field+".invert", "missing or not a boolean")
	}
	return s, nil
}

// parseModel reads a BPE model into m and returns its vocabulary.
func parseModel(raw json.RawMessage, m *model) (map[string]uint32, error) {
	if isNull(raw) {
		return nil, errf("model", "missing")
	}
	o, err := decodeObject("model", raw)
	if err != nil {
		return nil, err
	}
	if err := parseModelOptions(o, m); err != nil {
		return nil, err
	}
	var vocab map[string]uint32
	if ok, err := o.get("model", "vocab", &vocab); err != nil {
		return nil, err
	} else if !ok {
		return nil, errf("model.vocab", "missing")
	}
	merges, err := parseMerges(o, vocab)
	if err != nil {
		return nil, err
	}
	m.indexVocab(vocab)
	if err := m.setMerges(merges, vocab); err != nil {
		return nil, err
	}
	if err := m.setUnk(o, vocab); err != nil {
		return nil, err
	}
	return vocab, nil
}

// parseModelOptions checks the model is a BPE model this package runs as
// Hugging Face does, and reads its options into m.
func parseModelOptions(o object, m *model) error {
	var typ string
	if ok, err := o.get("model", "type", &typ); err != nil {
		return err
	} else if !ok {
		if _, hasMerges := o["merges"]; !hasMerges {
			return errf("model.type", "missing")
		}
		typ = "BPE" // as Hugging Face infers it
	}
	if typ != "BPE" {
		return errf("model.type", "%q not supported (only BPE)", typ)
	}
	var dropout float64
	if ok, err := o.get("model", "dropout", &dropout); err != nil {
		return err
	} else if ok && dropout != 0 {
		return errf("model.dropout", "%v not supported (random merges)", dropout)
	}
	for _, f := range []string{"continuing_subword_prefix", "end_of_word_suffix"} {
		var s string
		if _, err := o.get("model", f, &s); err != nil {
			return err
		}
		if s != "" {
			return errf("model."+f, "%q not supported", s)
		}
	}
	var byteFallback bool
	if _, err := o.get("model", "byte_fallback", &byteFallback); err != nil {
		return err
	}
	if byteFallback {
		return errf("model.byte_fallback", "true not supported")
	}
	if _, err := o.get("model", "ignore_merges", &m.ignoreMerges); err != nil {
		return err
	}
	if _, err := o.get("model", "fuse_unk", &m.fuseUnk); err != nil {
		return err
	}
	return nil
}

// indexVocab fills the byte tokens of m and, with ignore_merges, its whole
// words.
func (m *model) indexVocab(vocab map[string]uint32) {
	if m.ignoreMerges {
		m.words = make(map[string]uint32, len(vocab))
	}
	for i := range m.byteID {
		m.byteID[i] = -1
	}
	for s, id := range vocab {
		d, ok := byteLevelDecode(s)
		if !ok {
			continue
		}
		if m.ignoreMerges {
			m.words[string(d)] = id
		}
		if len(d) == 1 {
			m.byteID[d[0]] = int64(id)
		}
	}
}

// setMerges fills m's merge table: each pair's rank and merged token.
func (m *model) setMerges(merges [][2]string, vocab map[string]uint32) error {
	m.merges = make(map[uint64]uint64, len(merges))
	for rank, mg := range merges {
		field := fmt.Sprintf("model.merges[%d]", rank)
		a, ok := vocab[mg[0]]
		if !ok {
			return errf(field, "token %q not in the vocabulary", mg[0])
		}
		b, ok := vocab[mg[1]]
		if !ok {
			return errf(field, "token %q not in the vocabulary", mg[1])
		}
		ab, ok := vocab[mg[0]+mg[1]]
		if !ok {
			return errf(field, "token %q not in the vocabulary", mg[0]+mg[1])
		}
		// Of repeated pairs the last wins, as in Hugging Face's map.
		m.merges[pairKey(a, b)] = uint64(rank)<<32 | uint64(ab)
	}
	return nil
}

// setUnk reads model.unk_token into m (-1: none); after indexVocab.
func (m *model) setUnk(o object, vocab map[string]uint32) error {
	m.unk = -1
	var unk string
	if ok, err := o.get("model", "unk_token", &unk); err != nil || !ok {
		return err
	}
	if id, ok := vocab[unk]; ok {
		m.unk = int64(id)
		return nil
	}
	// Hugging Face fails on the first byte without a token.
	for b := range m.byteID {
		if m.byteID[b] < 0 {
			return errf("model.unk_token", "%q not in the vocabulary, and byte %#02x has no token", unk, b)
		}
	}
	return nil
}

// parseMerges reads model.merges: ["a b", ...] or [["a", "b"], ...].
func parseMerges(o object, vocab map[string]uint32) ([][2]string, error) {
	raw, ok := o["merges"]
	if !ok || isNull(raw) {
		return nil, errf("model.merges", "missing")
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err == nil {
		out := make([][2]string, len(pairs))
		for i, p := range pairs {
			if len(p) != 2 {
				return nil, errf(fmt.Sprintf("model.merges[%d]", i), "not a pair")
			}
			out[i] = [2]string{p[0], p[1]}
		}
		return out, nil
	}
	var lines []string
	if err := json.Unmarshal(raw, &lines); err != nil {
		return nil, errf("model.merges", "neither strings nor pairs of strings")
	}
	out := make([][2]string, len(lines))
	for i, line := range lines {
		field := fmt.Sprintf("model.merges[%d]", i)
		switch strings.Count(line, " ") {
		case 0:
			return nil, errf(field, "%q is not two tokens", line)
		case 1:
			a, b, _ := strings.Cut(line, " ")
			out[i] = [2]string{a, b}
		default:
			// Tokens with spaces: the one cut whose halves and whole
			// are tokens, as Hugging Face resolves it.
			found := 0
			for j := 0; j < len(line); j++ {
				if line[j] != ' ' {
					continue
				}
				a, b := line[:j], line[j+1:]
				_, okA := vocab[a]
				_, okB := vocab[b]
				_, okAB := vocab[a+b]
				if okA && okB && okAB {
					out[i] = [2]string{a, b}
					found++
				}
			}
			if found != 1 {
				return nil, errf(field, "%q does not split into two tokens in one way", line)
			}
		}
	}
	return out, nil
}

// Bounds on added tokens: matching costs up to maxAddedLen steps a byte of
// text, and the matcher's memory grows with the total.
const (
	maxAddedLen   = 1 << 10
	maxAddedTotal = 4 << 20
)

// parseAddedTokens reads added_tokens and gives each the id Hugging Face
// gives it on loading: its id in the model's vocabulary if it has one (or
// the id an earlier entry of the same content got), else the next id after
// the vocabulary and the added tokens so far. It keeps Hugging Face's lists:
// special tokens (first of each content) then the others.
func parseAddedTokens(raw json.RawMessage, vocab map[string]uint32) ([]addedToken, error) {
	if isNull(raw) {
		return nil, nil
	}
	entries, err := readAddedTokens(raw)
	if err != nil {
		return nil, err
	}
	r := newAddedReplay(vocab)
	for _, en := range entries {
		if err := r.add(en); err != nil {
			return nil, err
		}
	}
	return r.patterns(), nil
}

// addedEntry is one entry of added_tokens with its key, for equality of
// whole entries.
type addedEntry struct {
	addedToken
	key string
}

// entryKey identifies an added token by all its fields but the id.
func entryKey(a addedToken) string {
	return fmt.Sprint(a.content, a.singleWord, a.lstrip, a.rstrip, a.normalized, a.special)
}

// readAddedTokens reads the entries of added_tokens, leaving out those with
// empty content as Hugging Face does, within the bounds on added tokens.
func readAddedTokens(raw json.RawMessage) ([]addedEntry, error) {
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errf("added_tokens", "not a list")
	}
	var all []addedEntry
	total := 0
	for i, item := range list {
		field := fmt.Sprintf("added_tokens[%d]", i)
		a, err := readAddedToken(field, item)
		if err != nil {
			return nil, err
		}
		if a.content == "" {
			continue // Hugging Face ignores empty tokens
		}
		if len(a.content) > maxAddedLen {
			return nil, errf(field+".content", "longer than %d bytes not supported", maxAddedLen)
		}
		if total += len(a.content); total > maxAddedTotal {
			return nil, errf("added_tokens", "more than %d bytes of content not supported", maxAddedTotal)
		}
		all = append(all, addedEntry{a, entryKey(a)})
	}
	return all, nil
}

// readAddedToken reads one entry of added_tokens (its id is checked, not
// kept: Hugging Face gives ids anew).
func readAddedToken(field string, item json.RawMessage) (addedToken, error) {
	var a addedToken
	o, err := decodeObject(field, item)
	if err != nil {
		return a, err
	}
	var id uint32
	if ok, err := o.get(field, "id", &id); err != nil || !ok {
		return a, errf(field+".id", "missing or not an id")
	}
	if ok, err := o.get(field, "content", &a.content); err != nil || !ok {
		return a, errf(field+".content", "missing or not a string")
	}
	for _, f := range []struct {
		key string
		v   *bool
	}{{"single_word", &a.singleWord}, {"lstrip", &a.lstrip}, {"rstrip", &a.rstrip}, {"special", &a.special}} {
		if _, err := o.get(field, f.key, f.v); err != nil {
			return a, err
		}
	}
	a.normalized = !a.special
	if _, err := o.get(field, "normalized", &a.normalized); err != nil {
		return a, err
	}
	return a, nil
}

// addedReplay replays Hugging Face's AddedVocabulary::add_tokens, one token
// at a time.
type addedReplay struct {
	vocab      map[string]uint32
	vocabSize  uint32
	addedIDs   map[string]uint32
	flags      map[uint32]addedToken // added_tokens_map_r
	seen       map[string]bool       // whole entries in added_tokens_map_r
	specialSet map[string]bool
	specials   []addedToken
	others     []addedToken
	hasMax     bool
	maxAdded   uint32
}

func newAddedReplay(vocab map[string]uint32) *addedReplay {
	return &addedReplay{
		vocab:      vocab,
		vocabSize:  uint32(len(vocab)),
		addedIDs:   map[string]uint32{},
		flags:      map[uint32]addedToken{},
		seen:       map[string]bool{},
		specialSet: map[string]bool{},
	}
}

// add adds one entry.
func (r *addedReplay) add(en addedEntry) error {
	a := en.addedToken
	if a.special && !r.specialSet[a.content] {
		r.specials = append(r.specials, a)
		r.specialSet[a.content] = true
	}
	if r.seen[en.key] {
		return nil
	}
	id, err := r.idOf(a.content)
	if err != nil {
		return err
	}
	if old, ok := r.addedIDs[a.content]; ok && old != id {
		delete(r.flags, old)
	}
	r.addedIDs[a.content] = id
	if !r.hasMax || id > r.maxAdded {
		r.hasMax, r.maxAdded = true, id
	}
	if old, ok := r.flags[id]; ok {
		r.seen[entryKey(old)] = false
	}
	r.flags[id] = a
	r.seen[en.key] = true
	if !r.specialSet[a.content] {
		r.others = append(r.others, a)
	}
	return nil
}

// idOf is the id content gets: the one it was added with, its vocabulary
// id, or the next id after the vocabulary and the added tokens so far.
func (r *addedReplay) idOf(content string) (uint32, error) {
	if id, ok := r.addedIDs[content]; ok {
		return id, nil
	}
	if id, ok := r.vocab[content]; ok {
		return id, nil
	}
	switch {
	case !r.hasMax:
		return r.vocabSize, nil
	case r.maxAdded >= r.vocabSize || r.vocabSize == 0:
		if r.maxAdded == ^uint32(0) {
			return 0, errf("added_tokens", "ids overflow")
		}
		return r.maxAdded + 1, nil
	default:
		return r.vocabSize, nil
	}
}

// patterns are the matchers' patterns: each entry with its content's id and
// the options of the last entry given that id.
func (r *addedReplay) patterns() []addedToken {
	var out []addedToken
	for _, a := range append(r.specials, r.others...) {
		id := r.addedIDs[a.content]
		f := r.flags[id]
		f.id = id
		f.content = a.content
		f.normalized = a.normalized
		out = append(out, f)
	}
	return out
}
