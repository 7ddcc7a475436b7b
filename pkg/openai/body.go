package openai

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
)

// ErrNotObject is returned by Parse for valid JSON that is not an object.
var ErrNotObject = errors.New("request body is not a JSON object")

// Object is a parsed view of a JSON object's top level: the raw bytes and the
// span of each member. Nested values stay raw; nothing is re-encoded.
type Object struct {
	raw     []byte
	members []member
}

type member struct {
	key        string // raw key bytes between the quotes (escapes kept)
	start, end int    // span of the whole "key": value
	vStart     int    // start of the value
}

// Parse validates body as JSON and indexes its top-level members.
func Parse(body []byte) (Object, error) {
	if !json.Valid(body) {
		return Object{}, ErrMalformedJSONValue
	}
	return parseValid(body)
}

// ErrMalformedJSONValue is returned by Parse for invalid JSON.
var ErrMalformedJSONValue = errors.New("malformed JSON")

func parseValid(b []byte) (Object, error) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return Object{}, ErrNotObject
	}
	o := Object{raw: b, members: make([]member, 0, 8)}
	i = skipWS(b, i+1)
	for i < len(b) && b[i] != '}' {
		start := i
		kEnd := skipString(b, i)
		key := string(b[i+1 : kEnd-1])
		i = skipWS(b, kEnd)
		i = skipWS(b, i+1) // ':'
		vStart := i
		i = skipValue(b, i)
		o.members = append(o.members, member{key: key, start: start, end: i, vStart: vStart})
		i = skipWS(b, i)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
	return o, nil
}

// Raw returns the body the object was parsed from.
func (o Object) Raw() []byte { return o.raw }

// Get returns the raw value of a top-level key.
func (o Object) Get(key string) ([]byte, bool) {
	for _, m := range o.members {
		if m.key == key {
			return bytes.TrimRight(o.raw[m.vStart:m.end], " \t\r\n"), true
		}
	}
	return nil, false
}

// String returns a top-level string value (unquoted); ok is false when the
// key is absent or not a string.
func (o Object) String(key string) (string, bool) {
	v, ok := o.Get(key)
	if !ok || len(v) < 2 || v[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return string(v[1 : len(v)-1]), true
	}
	s, err := strconv.Unquote(string(v))
	if err != nil {
		var out string
		if json.Unmarshal(v, &out) != nil {
			return "", false
		}
		return out, true
	}
	return s, true
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
// existing member or appending one. The receiver is not modified.
func (o Object) Set(key string, value []byte) []byte {
	for _, m := range o.members {
		if m.key == key {
			out := make([]byte, 0, len(o.raw)+len(value))
			out = append(out, o.raw[:m.vStart]...)
			out = append(out, value...)
			return append(out, o.raw[m.end:]...)
		}
	}
	end := bytes.LastIndexByte(o.raw, '}')
	out := make([]byte, 0, len(o.raw)+len(key)+len(value)+4)
	out = append(out, o.raw[:end]...)
	if len(o.members) > 0 {
		out = append(out, ',')
	}
	out = append(out, '"')
	out = append(out, key...)
	out = append(out, '"', ':')
	out = append(out, value...)
	return append(out, o.raw[end:]...)
}

// Delete returns a new body without key (the body itself when key is absent).
func (o Object) Delete(key string) []byte {
	for idx, m := range o.members {
		if m.key != key {
			continue
		}
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
	return o.raw
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	i++
	for i < len(b) {
		j := bytes.IndexAny(b[i:], `"\`)
		if j < 0 {
			return len(b)
		}
		i += j
		if b[i] == '\\' {
			i += 2
			continue
		}
		return i + 1
	}
	return i
}

// skipValue returns the index just past the (valid) JSON value at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}
