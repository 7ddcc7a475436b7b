package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrNotObject is returned by Parse for valid JSON that is not an object.
var ErrNotObject = errors.New("request body is not a JSON object")

// ErrMalformedJSONValue is returned by Parse for invalid JSON.
var ErrMalformedJSONValue = errors.New("malformed JSON")

// ErrDuplicateKey is matched (errors.Is) by the *DuplicateKeyError that Parse
// returns for an object with a top-level key twice.
var ErrDuplicateKey = errors.New("duplicate key")

// DuplicateKeyError is returned by Parse for an object that has a top-level
// key more than once. Keys are compared as JSON decoders see them (escapes
// decoded), so "model" and "mod\u0065l" are the same key. Such bodies are
// refused rather than read: decoders disagree on which value wins (the
// first here, the last in Python's and Go's), and a router that reads one
// value while the engine reads another is a way around every check.
type DuplicateKeyError struct {
	Key string // the key, decoded
}

func (e *DuplicateKeyError) Error() string {
	return "request body has the key " + strconv.Quote(e.Key) + " more than once"
}

// Unwrap makes errors.Is(err, ErrDuplicateKey) hold.
func (e *DuplicateKeyError) Unwrap() error { return ErrDuplicateKey }

// Object is a parsed view of a JSON object's top level: the raw bytes and the
// span of each member. Nested values stay raw; nothing is re-encoded.
type Object struct {
	raw     []byte
	members []member
}

// member is one top-level "key": value of an Object.
type member struct {
	// decoded is the key as a JSON decoder reads it, set only when that
	// differs from the raw bytes (escapes, or invalid UTF-8, which decoders
	// replace with U+FFFD); empty otherwise, and the raw bytes are the key.
	decoded    string
	start, end int // span of the whole "key": value
	kEnd       int // end of the raw key: its bytes are raw[start+1:kEnd]
	vStart     int // start of the value
}

// rawKey returns the bytes of m's key between its quotes.
func (o *Object) rawKey(m *member) []byte { return o.raw[m.start+1 : m.kEnd] }

// dupIndexAt is the member count from which Parse finds duplicate keys with
// a map instead of comparing each key with every earlier one.
const dupIndexAt = 32

// Parse validates body as JSON and indexes its top-level members, in one
// pass over the bytes. A body with a top-level key twice is refused with a
// *DuplicateKeyError.
func Parse(body []byte) (Object, error) { return parse(body, make([]member, 0, 8)) }

// maxKeptMembers bounds the index an Index keeps for its next parse: a body
// with more top-level members (a hostile one) gets its own.
const maxKeptMembers = 64

// Index is storage for the member index of the Objects it parses, reused
// from one parse to the next, so that a caller that parses one body per
// pooled request allocates nothing for it (that allocation alone cost the
// queue-proxy about 2.5 µs a request in a perf profile: a fresh span every
// twenty-odd requests). Its zero value is ready.
type Index struct{ members []member }

// Parse is openai.Parse with the member index in x's storage. The Object it
// returns is valid until x parses again (the bodies Set and Delete make
// from it are their own).
func (x *Index) Parse(body []byte) (Object, error) {
	if x.members == nil {
		x.members = make([]member, 0, 8)
	}
	// Nothing of an earlier body stays reachable: a key's decoded copy
	// (up to three times the key's bytes) in a slot that later, smaller
	// bodies never overwrite would be pinned for as long as x is reused.
	clear(x.members[:cap(x.members)])
	o, err := parse(body, x.members[:0])
	if c := cap(o.members); c > cap(x.members) && c <= maxKeptMembers {
		x.members = o.members[:0]
	}
	return o, err
}

// parse is Parse with members as the index's storage.
func parse(body []byte, members []member) (Object, error) {
	s := scanner{b: body}
	i := s.ws(0)
	if i >= len(body) || body[i] != '{' {
		if end := s.value(i); end >= 0 && s.ws(end) == len(body) {
			return Object{}, ErrNotObject
		}
		return Object{}, ErrMalformedJSONValue
	}
	o := Object{raw: body, members: members}
	var seen map[string]struct{} // decoded keys, once there are dupIndexAt of them
	var dup error                // the first repeated key
	s.depth = 1
	i = s.ws(i + 1)
	if i < len(body) && body[i] == '}' {
		i++
	} else {
		for {
			if i >= len(body) || body[i] != '"' {
				return Object{}, ErrMalformedJSONValue
			}
			start := i
			kEnd := s.str(i)
			if kEnd < 0 {
				return Object{}, ErrMalformedJSONValue
			}
			i = s.ws(kEnd)
			if i >= len(body) || body[i] != ':' {
				return Object{}, ErrMalformedJSONValue
			}
			vStart := s.ws(i + 1)
			end := s.value(vStart)
			if end < 0 {
				return Object{}, ErrMalformedJSONValue
			}
			m := member{start: start, end: end, kEnd: kEnd - 1, vStart: vStart}
			if dup == nil {
				m.decoded = decodeKey(body[start+1 : kEnd-1])
				// A repeated key is reported once the rest is known to be
				// valid JSON: malformed JSON is the first thing to fix.
				seen, dup = o.add(&m, seen)
			}
			i = s.ws(end)
			if i >= len(body) {
				return Object{}, ErrMalformedJSONValue
			}
			if body[i] == '}' {
				i++
				break
			}
			if body[i] != ',' {
				return Object{}, ErrMalformedJSONValue
			}
			i = s.ws(i + 1)
		}
	}
	if s.ws(i) != len(body) {
		return Object{}, ErrMalformedJSONValue
	}
	if dup != nil {
		return Object{}, dup
	}
	return o, nil
}

// add appends m, or returns a *DuplicateKeyError when its key is taken.
// Keys are compared pairwise, without allocating, up to dupIndexAt members;
// from there on through seen, which add creates then and returns.
func (o *Object) add(m *member, seen map[string]struct{}) (map[string]struct{}, error) {
	key := o.rawKey(m)
	switch {
	case seen != nil:
		var dup bool
		if m.decoded != "" {
			_, dup = seen[m.decoded]
		} else {
			_, dup = seen[string(key)]
		}
		if dup {
			return nil, &DuplicateKeyError{Key: o.name(m)}
		}
		seen[o.name(m)] = struct{}{}
	case m.decoded != "":
		if o.index(m.decoded) >= 0 {
			return nil, &DuplicateKeyError{Key: m.decoded}
		}
	default:
		for i := range o.members {
			p := &o.members[i]
			if p.decoded == "" {
				if p.kEnd-p.start == m.kEnd-m.start && string(o.rawKey(p)) == string(key) {
					return nil, &DuplicateKeyError{Key: string(key)}
				}
			} else if p.decoded == string(key) {
				return nil, &DuplicateKeyError{Key: string(key)}
			}
		}
	}
	if seen == nil && len(o.members)+1 == dupIndexAt {
		seen = make(map[string]struct{}, 2*dupIndexAt)
		for i := range o.members {
			seen[o.name(&o.members[i])] = struct{}{}
		}
		seen[o.name(m)] = struct{}{}
	}
	o.members = append(o.members, *m)
	return seen, nil
}

// name returns the decoded key of m (a copy of the raw bytes when they are
// the key).
func (o *Object) name(m *member) string {
	if m.decoded != "" {
		return m.decoded
	}
	return string(o.rawKey(m))
}

// index returns the position of the member whose decoded key is key, or -1.
// A key of invalid UTF-8 is first read as a decoder would read it written
// as JSON (each invalid byte U+FFFD), so that Set writes the key Get finds.
func (o *Object) index(key string) int {
	if !utf8.ValidString(key) {
		key = string([]rune(key))
	}
	for i := range o.members {
		m := &o.members[i]
		if m.decoded != "" {
			if m.decoded == key {
				return i
			}
		} else if m.kEnd-m.start-1 == len(key) && string(o.rawKey(m)) == key {
			return i
		}
	}
	return -1
}

// decodeKey returns the raw key (the bytes between its quotes, already
// validated) decoded as encoding/json decodes strings, or "" when that is
// the raw bytes themselves: no escapes and valid UTF-8, the common case,
// which allocates nothing.
func decodeKey(raw []byte) string {
	plain := true
	for _, c := range raw {
		if c == '\\' || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if plain || (bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw)) {
		return ""
	}
	return unquote(raw)
}

// Raw returns the body the object was parsed from.
func (o Object) Raw() []byte { return o.raw }

// Get returns the raw value of a top-level key. Keys match as decoded:
// Get("model") finds "mod\u0065l".
func (o Object) Get(key string) ([]byte, bool) {
	idx := o.index(key)
	if idx < 0 {
		return nil, false
	}
	m := o.members[idx]
	return bytes.TrimRight(o.raw[m.vStart:m.end], " \t\r\n"), true
}

// String returns a top-level string value, decoded as encoding/json decodes
// it; ok is false when the key is absent or not a string.
func (o Object) String(key string) (string, bool) {
	v, ok := o.Get(key)
	if !ok || len(v) < 2 || v[0] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	if d := decodeKey(inner); d != "" {
		return d, true
	}
	return string(inner), true
}

// Bool returns a top-level boolean; absent or non-boolean reads as false.
func (o Object) Bool(key string) bool {
	v, ok := o.Get(key)
	return ok && string(v) == "true"
}

// Int returns a top-level integer; ok is false when absent or not an integer.
func (o Object) Int(key string) (int, bool) {
	v, ok := o.Get(key)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(string(v))
	return n, err == nil
}

// Set returns a new body with key set to the raw JSON value, replacing the
// existing member (matched as Get matches) or appending one, its key
// JSON-quoted. The receiver is not modified.
func (o Object) Set(key string, value []byte) []byte {
	if idx := o.index(key); idx >= 0 {
		m := o.members[idx]
		out := make([]byte, 0, len(o.raw)+len(value))
		out = append(out, o.raw[:m.vStart]...)
		out = append(out, value...)
		return append(out, o.raw[m.end:]...)
	}
	end := bytes.LastIndexByte(o.raw, '}')
	out := make([]byte, 0, len(o.raw)+len(key)+len(value)+4)
	out = append(out, o.raw[:end]...)
	if len(o.members) > 0 {
		out = append(out, ',')
	}
	out = appendQuoted(out, key)
	out = append(out, ':')
	out = append(out, value...)
	return append(out, o.raw[end:]...)
}

// Delete returns a new body without key, matched as Get matches (the body
// itself when key is absent).
func (o Object) Delete(key string) []byte {
	idx := o.index(key)
	if idx < 0 {
		return o.raw
	}
	m := o.members[idx]
	start, end := m.start, m.end
	if idx+1 < len(o.members) {
		end = o.members[idx+1].start // drop the trailing comma with it
	} else if idx > 0 {
		start = o.members[idx-1].end // drop the leading comma
	}
	out := make([]byte, 0, len(o.raw))
	out = append(out, o.raw[:start]...)
	return append(out, o.raw[end:]...)
}

// With returns the object of the body Set(key, value) returns, without
// parsing it again: an edit of a parsed body can follow another.
func (o Object) With(key string, value []byte) Object {
	raw := o.Set(key, value)
	members := make([]member, len(o.members), len(o.members)+1)
	copy(members, o.members)
	if idx := o.index(key); idx >= 0 {
		m := &members[idx]
		delta := len(value) - (m.end - m.vStart)
		m.end += delta
		shift(members[idx+1:], delta)
		return Object{raw: raw, members: members}
	}
	start := bytes.LastIndexByte(o.raw, '}')
	if len(o.members) > 0 {
		start++ // the comma
	}
	sc := scanner{b: raw}
	kEnd := sc.str(start) - 1 // the closing quote
	m := member{start: start, kEnd: kEnd, vStart: kEnd + 2, end: kEnd + 2 + len(value)}
	m.decoded = decodeKey(raw[start+1 : kEnd])
	return Object{raw: raw, members: append(members, m)}
}

// Without returns the object of the body Delete(key) returns, without
// parsing it again.
func (o Object) Without(key string) Object {
	idx := o.index(key)
	if idx < 0 {
		return o
	}
	raw := o.Delete(key)
	members := make([]member, 0, len(o.members)-1)
	members = append(members, o.members[:idx]...)
	members = append(members, o.members[idx+1:]...)
	shift(members[idx:], len(raw)-len(o.raw))
	return Object{raw: raw, members: members}
}

// shift moves the spans of ms by delta bytes.
func shift(ms []member, delta int) {
	for i := range ms {
		ms[i].start += delta
		ms[i].end += delta
		ms[i].kEnd += delta
		ms[i].vStart += delta
	}
}

// appendQuoted appends s as a JSON string: as it is when it needs no
// escaping (the keys the platform sets), else as encoding/json writes it.
func appendQuoted(dst []byte, s string) []byte {
	plain := true
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if !plain {
		q, _ := json.Marshal(s) // a string always marshals
		return append(dst, q...)
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// unquote decodes the bytes between the quotes of a validated JSON string
// (AppendUnquoted).
func unquote(raw []byte) string { return string(AppendUnquoted(make([]byte, 0, len(raw)), raw)) }

// AppendUnquoted appends the value of a validated JSON string, given as the
// bytes between its quotes, exactly as encoding/json decodes it: escapes
// decoded, a UTF-16 surrogate pair joined, a lone surrogate and each byte
// of invalid UTF-8 replaced by U+FFFD. Runs without escapes are copied
// whole. raw must come from validated JSON (Parse, Valid).
func AppendUnquoted(dst, raw []byte) []byte {
	for len(raw) > 0 {
		k := bytes.IndexByte(raw, '\\')
		if k < 0 {
			k = len(raw)
		}
		dst = appendValidUTF8(dst, raw[:k])
		if raw = raw[k:]; len(raw) == 0 {
			break
		}
		switch e := raw[1]; e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(raw[2:])
			raw = raw[6:]
			if utf16.IsSurrogate(r) {
				if len(raw) >= 6 && raw[0] == '\\' && raw[1] == 'u' {
					if pair := utf16.DecodeRune(r, hex4(raw[2:])); pair != utf8.RuneError {
						dst = utf8.AppendRune(dst, pair)
						raw = raw[6:]
						continue
					}
				}
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, e)
		}
		raw = raw[2:]
	}
	return dst
}

// appendValidUTF8 appends s with each byte of invalid UTF-8 replaced by
// U+FFFD, as encoding/json decodes strings.
func appendValidUTF8(dst, s []byte) []byte {
	if utf8.Valid(s) {
		return append(dst, s...)
	}
	for len(s) > 0 {
		r, size := utf8.DecodeRune(s)
		dst = utf8.AppendRune(dst, r)
		s = s[size:]
	}
	return dst
}

// hex4 decodes the four validated hex digits at the start of b.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}
