package kvevents

import (
	"bytes"
	"cmp"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Encode returns the msgpack payload of b in the array form vLLM used before
// its PR #42892 and SGLang uses: [ts, [events...], data_parallel_rank], each
// event an array of its type and its fields in order. A negative DPRank, a
// nil Parent or LoRAID and an empty Medium or LoRAName are sent as nil. Topic,
// Seq and First are not part of the payload. Encode refuses a batch that
// Decode would refuse for its size.
func Encode(b Batch) ([]byte, error) {
	err := limit(len(b.Events), MaxEvents, "events")
	events := make([]any, len(b.Events))
	for i, ev := range b.Events {
		switch ev := ev.(type) {
		case BlockStored:
			var parent any
			if ev.Parent != nil {
				parent = hashValues([]BlockHash{*ev.Parent}, &err)[0]
			}
			tokens := ev.TokenIDs
			if tokens == nil {
				tokens = []uint32{} // not nil
			}
			events[i] = []any{typeStored, hashValues(ev.Hashes, &err), parent, tokens, ev.BlockSize,
				ev.LoRAID, strValue(ev.Medium), strValue(ev.LoRAName)}
			err = cmp.Or(err, limit(len(ev.TokenIDs), MaxTokens, "token IDs"))
		case BlockRemoved:
			events[i] = []any{typeRemoved, hashValues(ev.Hashes, &err), strValue(ev.Medium)}
		case AllBlocksCleared:
			events[i] = []any{typeCleared}
		default:
			err = cmp.Or(err, fmt.Errorf("event of type %T", ev))
		}
	}
	var dpRank any
	if b.DPRank >= 0 {
		dpRank = b.DPRank
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err == nil {
		err = enc.Encode([]any{b.Time, events, dpRank})
	}
	if err != nil {
		return nil, fmt.Errorf("kvevents: encode: %w", err)
	}
	return buf.Bytes(), nil
}

func hashValues(hs []BlockHash, err *error) []any {
	*err = cmp.Or(*err, limit(len(hs), MaxBlocks, "block hashes"))
	vs := make([]any, len(hs))
	for i, h := range hs {
		*err = cmp.Or(*err, limit(len(h.b), MaxHashLen, "bytes in a block hash"))
		if vs[i] = h.n; h.isBytes {
			vs[i] = []byte(h.b)
		}
	}
	return vs
}

func strValue(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func limit(n, limit int, what string) error {
	if n > limit {
		return fmt.Errorf("%d %s, more than %d", n, what, limit)
	}
	return nil
}
