package prompt

import (
	"bytes"
	"errors"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// AppendChatJSON appends the canonical rendering of a chat request's raw,
// already validated "messages" value to dst. The result is exactly
// AppendChat(dst, DecodeMessages(raw)), computed without encoding/json for
// the shapes clients send (exact lower-case keys, valid UTF-8, string, null
// or text-part content); anything else takes the DecodeMessages path, so the
// two never disagree.
func AppendChatJSON(dst, raw []byte) ([]byte, error) {
	mark := len(dst)
	if out, ok := appendChatFast(dst, raw); ok {
		return out, nil
	}
	msgs, err := DecodeMessages(raw)
	if err != nil {
		return dst[:mark], err
	}
	return AppendChat(dst[:mark], msgs), nil
}

// errSlow makes the fast path give up.
var errSlow = errors.New("slow path")

// appendChatFast renders raw if it has the common shape; ok is false
// otherwise (dst beyond its original length is then garbage).
func appendChatFast(dst, raw []byte) ([]byte, bool) {
	p := fastParser{b: raw}
	i := p.ws(0)
	if i >= len(raw) || raw[i] != '[' {
		return dst, false
	}
	i = p.ws(i + 1)
	if i < len(raw) && raw[i] == ']' {
		return append(dst, GenerationPrompt...), p.ws(i+1) == len(raw)
	}
	for {
		var err error
		dst, i, err = p.message(dst, i)
		if err != nil {
			return dst, false
		}
		i = p.ws(i)
		if i >= len(raw) {
			return dst, false
		}
		if raw[i] == ']' {
			break
		}
		if raw[i] != ',' {
			return dst, false
		}
		i = p.ws(i + 1)
	}
	if p.ws(i+1) != len(raw) {
		return dst, false
	}
	return append(dst, GenerationPrompt...), true
}

type fastParser struct{ b []byte }

func (p *fastParser) ws(i int) int {
	for i < len(p.b) && (p.b[i] == ' ' || p.b[i] == '\t' || p.b[i] == '\n' || p.b[i] == '\r') {
		i++
	}
	return i
}

// str returns the raw content of the string at b[i] (between the quotes)
// and the index past it.
func (p *fastParser) str(i int) ([]byte, int, error) {
	if i >= len(p.b) || p.b[i] != '"' {
		return nil, 0, errSlow
	}
	j, q := i+1, -1 // q: the next unescaped-looking quote at or after j
	for {
		if q < j {
			k := bytes.IndexByte(p.b[j:], '"')
			if k < 0 {
				return nil, 0, errSlow
			}
			q = j + k
		}
		bs := bytes.IndexByte(p.b[j:q], '\\')
		if bs < 0 {
			return p.b[i+1 : q], q + 1, nil
		}
		j += bs + 2 // step over the escaped byte
		if j > len(p.b) {
			return nil, 0, errSlow
		}
	}
}

// skip returns the index past the (valid) value at b[i].
func (p *fastParser) skip(i int) (int, error) {
	if i >= len(p.b) {
		return 0, errSlow
	}
	switch p.b[i] {
	case '"':
		_, j, err := p.str(i)
		return j, err
	case '{', '[':
		depth := 0
		for i < len(p.b) {
			switch p.b[i] {
			case '"':
				_, j, err := p.str(i)
				if err != nil {
					return 0, err
				}
				i = j
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			}
			i++
		}
		return 0, errSlow
	}
	for i < len(p.b) {
		switch p.b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i, nil
		}
		i++
	}
	return i, nil
}

// members calls fn for each member of the object at b[i] with the raw key
// and the value's span; it returns the index past the object.
func (p *fastParser) members(i int, fn func(key []byte, vStart, vEnd int) error) (int, error) {
	if i >= len(p.b) || p.b[i] != '{' {
		return 0, errSlow
	}
	i = p.ws(i + 1)
	if i < len(p.b) && p.b[i] == '}' {
		return i + 1, nil
	}
	for {
		key, j, err := p.str(i)
		if err != nil {
			return 0, err
		}
		j = p.ws(j)
		if j >= len(p.b) || p.b[j] != ':' {
			return 0, errSlow
		}
		vStart := p.ws(j + 1)
		vEnd, err := p.skip(vStart)
		if err != nil {
			return 0, err
		}
		if err := fn(key, vStart, vEnd); err != nil {
			return 0, err
		}
		i = p.ws(vEnd)
		if i >= len(p.b) {
			return 0, errSlow
		}
		if p.b[i] == '}' {
			return i + 1, nil
		}
		if p.b[i] != ',' {
			return 0, errSlow
		}
		i = p.ws(i + 1)
	}
}

// foldsTo reports whether key would match name case-insensitively in
// encoding/json without being exactly name: such keys take the slow path.
func foldsTo(key []byte, name string) bool {
	return string(key) != name && bytes.EqualFold(key, []byte(name))
}

func (p *fastParser) message(dst []byte, i int) ([]byte, int, error) {
	var role, content []byte
	haveRole, haveContent := false, false
	end, err := p.members(i, func(key []byte, vs, ve int) error {
		switch {
		case string(key) == "role":
			if haveRole || p.b[vs] != '"' {
				return errSlow
			}
			role, haveRole = p.b[vs:ve], true
		case string(key) == "content":
			if haveContent {
				return errSlow
			}
			content, haveContent = p.b[vs:ve], true
		case foldsTo(key, "role"), foldsTo(key, "content"), bytes.IndexByte(key, '\\') >= 0:
			return errSlow
		}
		return nil
	})
	if err != nil || !haveRole || len(role) <= 2 {
		return dst, 0, errSlow
	}
	dst = append(dst, "<|"...)
	if dst, err = appendUnquoted(dst, role); err != nil {
		return dst, 0, err
	}
	dst = append(dst, "|>\n"...)
	if haveContent {
		if dst, err = p.content(dst, content); err != nil {
			return dst, 0, err
		}
	}
	return append(dst, '\n'), end, nil
}

func (p *fastParser) content(dst, v []byte) ([]byte, error) {
	switch v[0] {
	case 'n':
		return dst, nil // null
	case '"':
		return appendUnquoted(dst, v)
	case '[':
	default:
		return dst, errSlow
	}
	sub := fastParser{b: v}
	i := sub.ws(1)
	if i < len(v) && v[i] == ']' {
		return dst, nil
	}
	for {
		var typ, text []byte
		haveType, haveText := false, false
		end, err := sub.members(i, func(key []byte, vs, ve int) error {
			switch {
			case string(key) == "type":
				if haveType || sub.b[vs] != '"' {
					return errSlow
				}
				typ, haveType = sub.b[vs:ve], true
			case string(key) == "text":
				if haveText || sub.b[vs] != '"' {
					return errSlow
				}
				text, haveText = sub.b[vs:ve], true
			case foldsTo(key, "type"), foldsTo(key, "text"), bytes.IndexByte(key, '\\') >= 0:
				return errSlow
			}
			return nil
		})
		if err != nil {
			return dst, err
		}
		if haveType && string(typ) == `"text"` && haveText {
			if dst, err = appendUnquoted(dst, text); err != nil {
				return dst, err
			}
		} else if haveType && bytes.IndexByte(typ, '\\') >= 0 {
			return dst, errSlow // an escaped "text" type
		}
		i = sub.ws(end)
		if i >= len(v) {
			return dst, errSlow
		}
		if v[i] == ']' {
			return dst, nil
		}
		if v[i] != ',' {
			return dst, errSlow
		}
		i = sub.ws(i + 1)
	}
}

// appendUnquoted appends the value of the validated JSON string literal q
// (with its quotes) as encoding/json decodes it.
func appendUnquoted(dst, q []byte) ([]byte, error) {
	return openai.AppendUnquoted(dst, q[1:len(q)-1]), nil
}
