package stats

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/bits"
	"unicode/utf8"
)

// decodeKV reads data when it is a KV message in the plain shape a
// queue-proxy's encoding/json writes, and gives the Message decodeJSON
// gives for it. It takes: one object with the keys "type" (the string
// "kv") and "kv" (an object), each once, in any order, with JSON
// whitespace anywhere; in "kv", the keys of KVEvent spelled exactly as
// its JSON tags, each at most once, with values of their own type: pod a
// string without escapes in valid UTF-8, blockSize and capacity integers
// within int, seq an integer within uint64, reset true or false, added and
// removed arrays of such integers. For anything else (escapes, keys of
// another case or unknown, duplicate keys, null, fractions, exponents,
// out-of-range numbers, invalid JSON) handled is false and the caller asks
// encoding/json, which matches keys case-insensitively, merges duplicate
// objects and says what the error is: this decoder never decides those.
func decodeKV(data []byte) (m Message, handled bool) {
	s := kvScanner{b: data}
	if !s.eat('{') {
		return Message{}, false
	}
	var (
		kv      *KVEvent
		sawType bool
	)
	for {
		key, ok := s.str()
		if !ok || !s.eat(':') {
			return Message{}, false
		}
		switch string(key) {
		case "type":
			v, ok := s.str()
			if sawType || !ok || string(v) != TypeKV {
				return Message{}, false
			}
			sawType = true
		case "kv":
			if kv != nil {
				return Message{}, false
			}
			if kv = s.kvEvent(); kv == nil {
				return Message{}, false
			}
		default:
			return Message{}, false
		}
		if s.eat(',') {
			continue
		}
		if !s.eat('}') {
			return Message{}, false
		}
		break
	}
	s.ws()
	if s.i != len(s.b) || !sawType || kv == nil {
		return Message{}, false
	}
	return Message{Type: TypeKV, KV: kv}, true
}

// kvScanner reads the shape decodeKV takes. Every method reports false (or
// nil) on anything outside it, leaving the scanner anywhere: the caller
// then gives up.
type kvScanner struct {
	b []byte
	i int
}

// Bits of the KVEvent keys seen, against duplicates.
const (
	seenPod = 1 << iota
	seenBlockSize
	seenCapacity
	seenSeq
	seenReset
	seenAdded
	seenRemoved
)

// kvEvent reads a KVEvent object, or returns nil.
func (s *kvScanner) kvEvent() *KVEvent {
	if !s.eat('{') {
		return nil
	}
	ev := new(KVEvent)
	if s.eat('}') {
		return ev
	}
	seen := 0
	for {
		key, ok := s.str()
		if !ok || !s.eat(':') {
			return nil
		}
		var bit int
		switch string(key) {
		case "pod":
			bit = seenPod
			var v []byte
			if v, ok = s.str(); ok && utf8.Valid(v) {
				ev.Pod = string(v)
			} else {
				ok = false
			}
		case "blockSize":
			bit = seenBlockSize
			ev.BlockSize, ok = s.int()
		case "capacity":
			bit = seenCapacity
			ev.Capacity, ok = s.int()
		case "seq":
			bit = seenSeq
			ev.Seq, ok = s.uint()
		case "reset":
			bit = seenReset
			ev.Reset, ok = s.bool()
		case "added":
			bit = seenAdded
			ev.Added, ok = s.uints()
		case "removed":
			bit = seenRemoved
			ev.Removed, ok = s.uints()
		default:
			return nil
		}
		if !ok || seen&bit != 0 {
			return nil
		}
		seen |= bit
		if s.eat(',') {
			continue
		}
		if !s.eat('}') {
			return nil
		}
		return ev
	}
}

// ws skips JSON whitespace.
func (s *kvScanner) ws() {
	for s.i < len(s.b) {
		if !isSpace(s.b[s.i]) {
			return
		}
		s.i++
	}
}

// eat skips whitespace and then c, reporting whether c was there.
func (s *kvScanner) eat(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters and returns
// its bytes, which alias the input.
func (s *kvScanner) str() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	start := s.i
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// bool reads true or false. What follows is the caller's to check, so
// that "truex" fails there.
func (s *kvScanner) bool() (bool, bool) {
	s.ws()
	rest := s.b[s.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		s.i += 4
		return true, true
	case len(rest) >= 5 && string(rest[:5]) == "false":
		s.i += 5
		return false, true
	}
	return false, false
}

// maxUint64Tenth and maxUint64Last split math.MaxUint64 =
// maxUint64Tenth*10 + maxUint64Last, to check the 20th digit.
const (
	maxUint64Tenth = math.MaxUint64 / 10
	maxUint64Last  = math.MaxUint64 % 10
)

// uint reads an integer without sign, fraction or exponent in JSON's form
// (no leading zeros) that fits in a uint64. A fraction or exponent after
// it is left for the caller, which fails on it.
func (s *kvScanner) uint() (uint64, bool) {
	s.ws()
	start := s.i
	for s.i < len(s.b) && s.b[s.i]-'0' <= 9 {
		s.i++
	}
	return parseUint(s.b[start:s.i])
}

// parseUint reads digits, which must be an integer in JSON's form (not
// empty, no leading zero) that fits in a uint64.
func parseUint(digits []byte) (uint64, bool) {
	n := len(digits)
	if n == 0 || n > 20 || (n > 1 && digits[0] == '0') {
		return 0, false
	}
	if n < 20 {
		return parseDigits(digits), true // < 10^19: no overflow
	}
	v, last := parseDigits(digits[:19]), uint64(digits[19]-'0')
	if v > maxUint64Tenth || (v == maxUint64Tenth && last > maxUint64Last) {
		return 0, false
	}
	return v*10 + last, true
}

// parseDigits returns the value of at most 19 decimal digits, eight at a
// time.
func parseDigits(digits []byte) uint64 {
	var v uint64
	for len(digits) >= 8 {
		v = v*100_000_000 + parse8(digits)
		digits = digits[8:]
	}
	for _, c := range digits {
		v = v*10 + uint64(c-'0')
	}
	return v
}

// parse8 returns the value of the eight decimal digits b starts with (the
// first the most significant), in a few multiplications: adjacent digits
// join into pairs, pairs into fours, fours into the eight.
func parse8(b []byte) uint64 {
	v := binary.LittleEndian.Uint64(b) - 0x3030303030303030
	v = v*10 + v>>8 // byte 2k holds the pair of digits 2k and 2k+1
	return ((v&0x000000ff000000ff)*(100+1_000_000<<32) + (v>>16&0x000000ff000000ff)*(1+10_000<<32)) >> 32
}

// int reads an integer in JSON's form that fits in an int.
func (s *kvScanner) int() (int, bool) {
	neg := s.eat('-')
	if neg && s.i < len(s.b) && s.b[s.i]-'0' > 9 {
		return 0, false // "- 1": no whitespace after the sign
	}
	mag, ok := s.uint()
	switch {
	case !ok:
		return 0, false
	case !neg && mag <= math.MaxInt:
		return int(mag), true
	case neg && mag <= uint64(math.MaxInt)+1:
		return int(-mag), true // -(MaxInt+1) wraps to MinInt
	}
	return 0, false
}

// uints reads an array of integers as uint reads them into a slice sized
// once (an empty array gives an empty slice, not nil, as encoding/json).
func (s *kvScanner) uints() ([]uint64, bool) {
	if !s.eat('[') {
		return nil, false
	}
	// The array of the shape taken holds only digits, commas and
	// whitespace: it ends at the first ']', and has a comma fewer than
	// elements, each of at least one digit and a comma (but the last).
	// This bounds the slice also on arrays not taken (which fail below).
	size := bytes.IndexByte(s.b[s.i:], ']')
	if size < 0 {
		return nil, false
	}
	end := s.i + size
	n := min(bytes.Count(s.b[s.i:end], []byte{','})+1, (size+1)/2)
	// Sized once for up to maxPresized elements; beyond, append grows it
	// as the digits are read, so that commas alone (a forged message)
	// cannot make the reader allocate before the array is checked.
	out := make([]uint64, 0, min(n, maxPresized))
	// Read (ws digits ws (',' ws digits ws)*)? up to end.
	b, i := s.b, s.i
	for i < end && isSpace(b[i]) {
		i++
	}
	for i < end {
		start := i
		i = digitsEnd(b, i)
		v, ok := parseUint(b[start:i])
		if !ok || i > end || len(out) == n {
			return nil, false
		}
		out = append(out, v)
		for i < end && isSpace(b[i]) {
			i++
		}
		if i == end {
			break
		}
		if b[i] != ',' {
			return nil, false
		}
		i++
		for i < end && isSpace(b[i]) {
			i++
		}
		if i == end {
			return nil, false // a comma before ']'
		}
	}
	s.i = end + 1
	return out, true
}

// digitsEnd returns the index of the first byte from b[i] that is not a
// decimal digit (len(b) if none), eight bytes at a time.
func digitsEnd(b []byte, i int) int {
	for i+8 <= len(b) {
		if m := nonDigits(binary.LittleEndian.Uint64(b[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
		i += 8
	}
	for i < len(b) && b[i]-'0' <= 9 {
		i++
	}
	return i
}

// nonDigits returns x (eight bytes) with the high bit of every byte that
// is not '0'..'9' set and every other bit clear. No step carries from one
// byte into the next, so every byte is judged on its own.
func nonDigits(x uint64) uint64 {
	const (
		ones  = 0x0101010101010101
		high  = 0x8080808080808080
		low7  = 0x7f7f7f7f7f7f7f7f
		loNib = 0x0f0f0f0f0f0f0f0f
	)
	a := x ^ (ones * '0') // a digit is now 0..9
	// Nonzero where the high nibble is set or the low one is over 9.
	bad := a&^loNib | (a&loNib+ones*6)&(ones*0x10)
	return ((bad&low7 + low7) | bad) & high
}

// isSpace reports whether c is JSON whitespace.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}

// maxPresized bounds the slice an array is sized for before its elements
// are read (32 KiB).
const maxPresized = 4096
