package kvevents

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"
)

// Batch is one message of an engine's event stream.
type Batch struct {
	// Topic is the message's topic frame; Seq its sequence number.
	Topic string
	Seq   uint64
	// First is set on the first batch of its topic since the Subscriber
	// (re)connected: batches published before it may have been missed.
	First bool
	// Time is when the engine published the batch, in seconds since the Unix
	// epoch on the engine's clock.
	Time float64
	// DPRank is the data-parallel rank of the publishing engine, or -1 when
	// the batch does not say.
	DPRank int
	Events []Event
}

// Event is one change to an engine's prefix cache: BlockStored, BlockRemoved
// or AllBlocksCleared.
type Event interface {
	isEvent()
}

// BlockStored reports blocks the engine added to its cache: consecutive
// blocks of one sequence, each BlockSize tokens long.
type BlockStored struct {
	Hashes []BlockHash
	// Parent is the hash of the block before Hashes[0], nil when Hashes[0]
	// is the first block of its sequence.
	Parent    *BlockHash
	TokenIDs  []uint32
	BlockSize int
	// LoRAID is the LoRA adapter's id (vLLM's deprecated lora_id), and
	// LoRAName its name (vLLM's lora_name); nil and "" for the base model.
	LoRAID   *int
	LoRAName string
	// Medium is where the blocks are stored ("GPU", "CPU", ...), "" when the
	// engine does not say.
	Medium string
}

// BlockRemoved reports blocks the engine evicted from its cache.
type BlockRemoved struct {
	Hashes []BlockHash
	Medium string
}

// AllBlocksCleared reports that the engine emptied its cache.
type AllBlocksCleared struct{}

func (BlockStored) isEvent()      {}
func (BlockRemoved) isEvent()     {}
func (AllBlocksCleared) isEvent() {}

// BlockHash is an engine's hash of a block: a 64-bit integer (vLLM by
// default, SGLang) or a byte string (vLLM with
// VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0, e.g. a 32-byte sha256). It is
// comparable and can key a map: two hashes are equal when they are of the
// same kind and value. The zero value is IntHash(0).
type BlockHash struct {
	n       uint64
	b       string
	isBytes bool
}

// IntHash returns an integer block hash. A signed hash is passed as its
// two's complement, as Decode does: uint64(int64(v)).
func IntHash(v uint64) BlockHash { return BlockHash{n: v} }

// BytesHash returns a byte-string block hash; it copies b.
func BytesHash(b []byte) BlockHash { return BlockHash{b: string(b), isBytes: true} }

// IsBytes reports whether h is a byte-string hash.
func (h BlockHash) IsBytes() bool { return h.isBytes }

// Bytes returns a copy of a byte-string hash, nil for an integer one.
func (h BlockHash) Bytes() []byte {
	if !h.isBytes {
		return nil
	}
	return []byte(h.b)
}

// Uint64 returns an integer hash, or the last 8 bytes of a byte-string hash
// read big-endian (zero-padded on the left when shorter), which is what vLLM
// sends for the same block in its integer mode.
func (h BlockHash) Uint64() uint64 {
	if !h.isBytes {
		return h.n
	}
	var buf [8]byte
	b := h.b[max(0, len(h.b)-8):]
	copy(buf[8-len(b):], b)
	return binary.BigEndian.Uint64(buf[:])
}

// String returns an integer hash in decimal, a byte-string hash as 0x and
// lower-case hexadecimal.
func (h BlockHash) String() string {
	if h.isBytes {
		return "0x" + hex.EncodeToString([]byte(h.b))
	}
	return strconv.FormatUint(h.n, 10)
}
