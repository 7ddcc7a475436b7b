package tokenizer

// The byte-level alphabet of GPT-2 (bytes_to_unicode in OpenAI's encoder.py,
// BYTES_CHAR in Hugging Face tokenizers): every byte is shown as one printable
// rune, so a vocabulary of strings can hold any byte sequence. The printable
// bytes '!'..'~', '¡'..'¬' and '®'..'ÿ' stand for themselves; the other 68
// bytes, in increasing order, become U+0100, U+0101, ...

var (
	// byteRune[b] is the rune that stands for byte b.
	byteRune [256]rune
	// byteOrder lists the bytes in the order GPT-2 assigns them ids (the
	// printable ones first, then the rest): the order of their runes.
	byteOrder [256]byte
)

// runeByte returns the byte that rune r stands for, if r is one of the 256
// byte-level runes.
func runeByte(r rune) (byte, bool) {
	switch {
	case r >= '!' && r <= '~', r >= 0xA1 && r <= 0xAC, r >= 0xAE && r <= 0xFF:
		return byte(r), true
	case r >= 0x100 && r < 0x100+68:
		return nonPrintable[r-0x100], true
	}
	return 0, false
}

// nonPrintable lists, in increasing order, the 68 bytes that are shown as
// U+0100 onwards.
var nonPrintable [68]byte

func printableByte(b int) bool {
	return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if printableByte(b) {
			byteRune[b] = rune(b)
		} else {
			byteRune[b] = rune(0x100 + n)
			nonPrintable[n] = byte(b)
			n++
		}
	}
	i := 0
	for b := 0; b < 256; b++ {
		if printableByte(b) {
			byteOrder[i] = byte(b)
			i++
		}
	}
	for _, b := range nonPrintable {
		byteOrder[i] = b
		i++
	}
}

// byteLevelDecode returns the bytes that the byte-level string s stands for,
// and false if s holds a rune outside the byte-level alphabet.
func byteLevelDecode(s string) ([]byte, bool) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		b, ok := runeByte(r)
		if !ok {
			return nil, false
		}
		out = append(out, b)
	}
	return out, true
}

// byteLevelEncode returns the byte-level string of the bytes b.
func byteLevelEncode(b []byte) string {
	out := make([]rune, len(b))
	for i, c := range b {
		out[i] = byteRune[c]
	}
	return string(out)
}
