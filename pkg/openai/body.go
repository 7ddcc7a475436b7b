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

// Parse validates body as JSON and indexes its top-level members, in one
// pass over the bytes.
func Parse(body []byte) (Object, error) {
	s := scanner{b: body}
	i := s.ws(0)
	if i >= len(body) || body[i] != '{' {
		if end := s.value(i); end >= 0 && s.ws(end) == len(body) {
			return Object{}, ErrNotObject
		}
		return Object{}, ErrMalformedJSONValue
	}
	o := Object{raw: body, members: make([]member, 0, 8)}
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
			o.members = append(o.members, member{key: string(body[start+1 : kEnd-1]), start: start, end: end, vStart: vStart})
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
	return o, nil
}

// ErrMalformedJSONValue is returned by Parse for invalid JSON.
var ErrMalformedJSONValue = errors.New("malformed JSON")

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
