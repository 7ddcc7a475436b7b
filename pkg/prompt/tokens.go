package prompt

import "encoding/binary"

// BytesPerToken is the size of one token of the deterministic tokenizer:
// token i of a text is its bytes [4i, 4i+4), the last one possibly shorter.
const BytesPerToken = 4

// TokenCount returns the number of tokens of text: ceil(len/4).
func TokenCount[T ~string | ~[]byte](text T) int {
	return (len(text) + BytesPerToken - 1) / BytesPerToken
}

// Hash constants: FNV-1a 64 (offset basis and prime), applied to 64-bit
// little-endian words rather than single bytes, then finalised with the
// splitmix64 mixer so every input bit reaches every output bit.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// BlockHashes returns the chained hashes of the full token blocks of text, a
// block being blockSize tokens (4*blockSize bytes). The hash of block i covers
// blocks 0..i: h_i = hash(h_{i-1}, bytes of block i). A trailing partial block
// has no hash. The result is identical across processes and platforms.
func BlockHashes(text []byte, blockSize int) []uint64 {
	if blockSize <= 0 {
		return nil
	}
	n := len(text) / (blockSize * BytesPerToken)
	if n == 0 {
		return nil
	}
	return AppendBlockHashes(make([]uint64, 0, n), text, blockSize)
}

// AppendBlockHashes appends the chained hashes of text's full blocks to dst
// (see BlockHashes) and returns the extended slice.
func AppendBlockHashes(dst []uint64, text []byte, blockSize int) []uint64 {
	if blockSize <= 0 {
		return dst
	}
	size := blockSize * BytesPerToken
	var prev uint64
	for off := 0; off+size <= len(text); off += size {
		prev = chain(prev, text[off:off+size])
		dst = append(dst, prev)
	}
	return dst
}

// chain hashes one block's bytes seeded with the previous block's hash.
func chain(prev uint64, block []byte) uint64 {
	h := uint64(fnvOffset)
	h = (h ^ prev) * fnvPrime
	for len(block) >= 8 {
		h = (h ^ binary.LittleEndian.Uint64(block)) * fnvPrime
		block = block[8:]
	}
	for _, b := range block {
		h = (h ^ uint64(b)) * fnvPrime
	}
	return mix(h)
}

// mix is the splitmix64 finaliser.
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// AppendTokens appends the token ids of the deterministic tokenizer to dst:
// token i is the little-endian uint32 of text's bytes [4i, 4i+4), the last
// one zero-padded. A prompt given as token ids (AppendCompletion) round-trips.
func AppendTokens(dst []uint32, text []byte) []uint32 {
	for len(text) >= BytesPerToken {
		dst = append(dst, binary.LittleEndian.Uint32(text))
		text = text[BytesPerToken:]
	}
	if len(text) > 0 {
		var last [BytesPerToken]byte
		copy(last[:], text)
		dst = append(dst, binary.LittleEndian.Uint32(last[:]))
	}
	return dst
}

// ChainTokens returns the hash of one block of token ids seeded with the
// previous block's hash (0 before the first block). It hashes the tokens'
// little-endian bytes exactly as chain hashes text, so that for the
// deterministic tokenizer the hashes of a text's full blocks and of its
// tokens' full blocks are the same: an engine that reports token ids and a
// router that renders text agree.
func ChainTokens(prev uint64, block []uint32) uint64 {
	h := uint64(fnvOffset)
	h = (h ^ prev) * fnvPrime
	for len(block) >= 2 {
		h = (h ^ (uint64(block[0]) | uint64(block[1])<<32)) * fnvPrime
		block = block[2:]
	}
	if len(block) == 1 {
		for i := 0; i < BytesPerToken; i++ {
			h = (h ^ uint64(byte(block[0]>>(8*i)))) * fnvPrime
		}
	}
	return mix(h)
}

// AppendTokenBlockHashes appends the chained hashes of the full blocks of
// tokens (blockSize tokens a block) to dst and returns the extended slice.
// These are the prefix index's keys for engines with a real tokenizer: the
// router tokenizes as the engine does, and the engine's KV events carry the
// token ids of every block they report.
func AppendTokenBlockHashes(dst []uint64, tokens []uint32, blockSize int) []uint64 {
	if blockSize <= 0 {
		return dst
	}
	var prev uint64
	for off := 0; off+blockSize <= len(tokens); off += blockSize {
		prev = ChainTokens(prev, tokens[off:off+blockSize])
		dst = append(dst, prev)
	}
	return dst
}
