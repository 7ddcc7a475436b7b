package openai

import (
	"encoding/binary"
	"math/bits"
)

// maxDepth bounds nesting, as encoding/json does.
const maxDepth = 10000

// scanner validates JSON in one pass with the grammar of encoding/json's
// json.Valid (strings are not checked for UTF-8, as there), so that Parse
// both validates a body and indexes its top level without a second pass.
type scanner struct {
	b     []byte
	depth int
}

// Valid reports whether b is one JSON value, as json.Valid does, at the
// speed of Parse.
func Valid(b []byte) bool {
	s := scanner{b: b}
	end := s.value(s.ws(0))
	return end >= 0 && s.ws(end) == len(b)
}

func (s *scanner) ws(i int) int {
	for i < len(s.b) {
		switch s.b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value validates the value at b[i] and returns the index past it, or -1.
func (s *scanner) value(i int) int {
	if i >= len(s.b) {
		return -1
	}
	switch c := s.b[i]; {
	case c == '"':
		return s.str(i)
	case c == '{':
		return s.object(i)
	case c == '[':
		return s.array(i)
	case c == 't':
		return s.lit(i, "true")
	case c == 'f':
		return s.lit(i, "false")
	case c == 'n':
		return s.lit(i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number(i)
	}
	return -1
}

func (s *scanner) lit(i int, want string) int {
	if len(s.b)-i < len(want) || string(s.b[i:i+len(want)]) != want {
		return -1
	}
	return i + len(want)
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

func (s *scanner) number(i int) int {
	b := s.b
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// special returns a mask with the high bit set in the first byte of x that
// is '"', '\\' or a control character (the lowest set bit is exact).
func special(x uint64) uint64 {
	q := x ^ (lsb * '"')
	bs := x ^ (lsb * '\\')
	return ((q - lsb) &^ q & msb) | ((bs - lsb) &^ bs & msb) | ((x - lsb*0x20) &^ x & msb)
}

// str validates the string starting at b[i] == '"'; it returns the index
// past the closing quote or -1.
func (s *scanner) str(i int) int {
	b := s.b
	i++
	for {
		for i+8 <= len(b) {
			m := special(binary.LittleEndian.Uint64(b[i:]))
			if m != 0 {
				i += bits.TrailingZeros64(m) / 8
				break
			}
			i += 8
		}
		for i < len(b) && b[i] != '"' && b[i] != '\\' && b[i] >= 0x20 {
			i++
		}
		if i >= len(b) {
			return -1
		}
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		}
		// An escape.
		if i+1 >= len(b) {
			return -1
		}
		switch b[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if i+6 > len(b) {
				return -1
			}
			for _, h := range b[i+2 : i+6] {
				if !isHex(h) {
					return -1
				}
			}
			i += 6
		default:
			return -1
		}
	}
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (s *scanner) enter() bool {
	s.depth++
	return s.depth <= maxDepth
}

func (s *scanner) object(i int) int {
	if !s.enter() {
		return -1
	}
	defer func() { s.depth-- }()
	i = s.ws(i + 1)
	if i < len(s.b) && s.b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(s.b) || s.b[i] != '"' {
			return -1
		}
		if i = s.str(i); i < 0 {
			return -1
		}
		i = s.ws(i)
		if i >= len(s.b) || s.b[i] != ':' {
			return -1
		}
		if i = s.value(s.ws(i + 1)); i < 0 {
			return -1
		}
		i = s.ws(i)
		if i >= len(s.b) {
			return -1
		}
		switch s.b[i] {
		case ',':
			i = s.ws(i + 1)
		case '}':
			return i + 1
		default:
			return -1
		}
	}
}

func (s *scanner) array(i int) int {
	if !s.enter() {
		return -1
	}
	defer func() { s.depth-- }()
	i = s.ws(i + 1)
	if i < len(s.b) && s.b[i] == ']' {
		return i + 1
	}
	for {
		if i = s.value(i); i < 0 {
			return -1
		}
		i = s.ws(i)
		if i >= len(s.b) {
			return -1
		}
		switch s.b[i] {
		case ',':
			i = s.ws(i + 1)
		case ']':
			return i + 1
		default:
			return -1
		}
	}
}
