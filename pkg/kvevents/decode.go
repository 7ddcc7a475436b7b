package kvevents

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Limits of what Decode accepts.
const (
	MaxEvents    = 1 << 16 // events in one batch
	MaxBlocks    = 1 << 16 // block hashes in one event
	MaxTokens    = 1 << 20 // token IDs in one event
	MaxHashLen   = 64      // bytes in a byte-string block hash
	MaxStringLen = 1 << 12 // bytes in a type, key, medium or LoRA name
	MaxDepth     = 16      // nesting of the values Decode skips
)

// Event types, as they appear on the wire.
const (
	typeStored  = "BlockStored"
	typeRemoved = "BlockRemoved"
	typeCleared = "AllBlocksCleared"
)

// Field names of the array forms of batches and events, in order (an
// event's after its type). Fields beyond them are skipped.
var (
	batchOrder = map[string][]string{"": {"ts", "events", "data_parallel_rank"}}
	fieldOrder = map[string][]string{
		typeStored:  {"block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name"},
		typeRemoved: {"block_hashes", "medium"},
	}
)

// Decode reads the msgpack payload of one message (its third frame). The
// Batch it returns has no Topic, Seq or First. Events of types this version
// does not know are left out; unknown fields are ignored. Any other
// deviation from the schema, or a limit exceeded, is an error.
func Decode(payload []byte) (Batch, error) {
	r := bytes.NewReader(payload)
	x := decoder{r: r, d: msgpack.NewDecoder(r)}
	b, err := x.batch()
	if err == nil && r.Len() > 0 {
		err = fmt.Errorf("%d bytes after the batch", r.Len())
	}
	if err != nil {
		return Batch{}, fmt.Errorf("kvevents: decode: %w", err)
	}
	return b, nil
}

type decoder struct {
	r *bytes.Reader // the input; d reads it directly, without buffering
	d *msgpack.Decoder
}

func (x *decoder) batch() (Batch, error) {
	b := Batch{DPRank: -1}
	hasEvents := false
	_, err := x.record(false, batchOrder, func(name string) (err error) {
		switch name {
		case "ts":
			b.Time, err = x.float()
		case "events":
			b.Events, err = list(x, MaxEvents, x.event)
			b.Events = slices.DeleteFunc(b.Events, func(e Event) bool { return e == nil })
			hasEvents = true
		case "data_parallel_rank":
			if !x.null() {
				b.DPRank, err = x.int(0, math.MaxInt32)
			}
		default:
			return x.skip(1)
		}
		return wrap("batch "+name, err)
	})
	if err == nil && !hasEvents {
		err = errors.New("batch without events")
	}
	return b, err
}

// event reads one event, or returns nil for an event of an unknown type.
func (x *decoder) event() (Event, error) {
	var e BlockStored // the fields of any event type
	hasHashes := false
	typ, err := x.record(true, fieldOrder, func(name string) (err error) {
		switch name {
		case "block_hashes":
			e.Hashes, err = list(x, MaxBlocks, x.hash)
			hasHashes = true
		case "parent_block_hash":
			if !x.null() {
				h, err1 := x.hash()
				e.Parent, err = &h, err1
			}
		case "token_ids":
			e.TokenIDs, err = list(x, MaxTokens, func() (uint32, error) {
				t, err := x.int(0, math.MaxUint32)
				return uint32(t), err
			})
		case "block_size":
			e.BlockSize, err = x.int(0, math.MaxInt32)
		case "lora_id":
			if !x.null() {
				id, err1 := x.int(math.MinInt32, math.MaxInt32)
				e.LoRAID, err = &id, err1
			}
		case "medium":
			e.Medium, err = x.optStr()
		case "lora_name": // in SGLang's salted events, this position is a map
			if c, err1 := x.d.PeekCode(); err1 == nil && msgpcode.IsString(c) {
				e.LoRAName, err = x.str()
			} else {
				err = x.skip(1)
			}
		default:
			return x.skip(1)
		}
		return wrap(name, err)
	})
	switch {
	case err != nil:
		return nil, err
	case typ == "":
		return nil, errors.New("event without type")
	case (typ == typeStored || typ == typeRemoved) && !hasHashes:
		return nil, fmt.Errorf("%s without block_hashes", typ)
	case typ == typeStored:
		return e, nil
	case typ == typeRemoved:
		return BlockRemoved{Hashes: e.Hashes, Medium: e.Medium}, nil
	case typ == typeCleared:
		return AllBlocksCleared{}, nil
	}
	return nil, nil
}

// record reads a map, calling set with each key, or an array, calling set
// with the name order[typ] gives to each position and skipping the positions
// it does not name. When tagged, record returns the type of the record: a
// map's "type" entry, or an array's first element; else typ is "".
func (x *decoder) record(tagged bool, order map[string][]string, set func(name string) error) (typ string, err error) {
	c, err := x.d.PeekCode()
	if err != nil {
		return "", err
	}
	if isMap(c) {
		n, err := x.mapLen()
		for ; err == nil && n > 0; n-- {
			var key string
			if key, err = x.str(); err != nil {
				err = wrap("key", err)
			} else if tagged && key == "type" {
				typ, err = x.str()
				err = wrap("type", err)
			} else {
				err = set(key)
			}
		}
		return typ, err
	}
	n, err := x.arrayLen(math.MaxInt)
	if err == nil && tagged {
		if n == 0 {
			return "", errors.New("empty array, want [type, ...]")
		}
		typ, err = x.str()
		err, n = wrap("type", err), n-1
	}
	names := order[typ]
	for i := 0; err == nil && i < n; i++ {
		if i < len(names) {
			err = set(names[i])
		} else {
			err = x.skip(1)
		}
	}
	return typ, err
}

// list reads an array of at most limit elements.
func list[T any](x *decoder, limit int, elem func() (T, error)) ([]T, error) {
	n, err := x.arrayLen(limit)
	if err != nil {
		return nil, err
	}
	s := make([]T, n)
	for i := range s {
		if s[i], err = elem(); err != nil {
			return nil, wrap(fmt.Sprint(i), err)
		}
	}
	return s, nil
}

func (x *decoder) hash() (BlockHash, error) {
	c, err := x.want("an integer or bytes", func(c byte) bool {
		return isInt(c) || msgpcode.IsBin(c) || msgpcode.IsString(c)
	})
	if err != nil {
		return BlockHash{}, err
	}
	if isInt(c) {
		n, err := x.d.DecodeUint64() // a negative hash as its two's complement
		return IntHash(n), err
	}
	b, err := x.bytes(MaxHashLen)
	return BlockHash{b: b, isBytes: true}, err
}

// int reads an integer in [lo, hi].
func (x *decoder) int(lo, hi int64) (int, error) {
	c, err := x.want("an integer", isInt)
	if err != nil {
		return 0, err
	}
	u, err := x.d.DecodeUint64() // a negative integer as its two's complement
	n := int64(u)
	if c == msgpcode.Uint64 && n < 0 {
		n = math.MaxInt64 // too large anyway
	}
	if err == nil && (n < lo || n > hi) {
		err = fmt.Errorf("%d out of range [%d, %d]", n, lo, hi)
	}
	return int(n), err
}

func (x *decoder) float() (float64, error) {
	if _, err := x.want("a number", func(c byte) bool {
		return c == msgpcode.Float || c == msgpcode.Double || isInt(c)
	}); err != nil {
		return 0, err
	}
	return x.d.DecodeFloat64()
}

func (x *decoder) str() (string, error) {
	if _, err := x.want("a string", func(c byte) bool { return msgpcode.IsString(c) || msgpcode.IsBin(c) }); err != nil {
		return "", err
	}
	return x.bytes(MaxStringLen)
}

func (x *decoder) optStr() (string, error) {
	if x.null() {
		return "", nil
	}
	return x.str()
}

// bytes reads a string or binary value of at most limit bytes.
func (x *decoder) bytes(limit int) (string, error) {
	n, err := x.d.DecodeBytesLen()
	if err == nil {
		err = x.fits(n, 1, limit, "bytes")
	}
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	_, err = io.ReadFull(x.r, b)
	return string(b), err
}

// arrayLen reads the length of an array of at most limit elements, each of
// which takes at least a byte of what is left.
func (x *decoder) arrayLen(limit int) (int, error) {
	if _, err := x.want("an array", isArray); err != nil {
		return 0, err
	}
	n, err := x.d.DecodeArrayLen()
	if err == nil {
		err = x.fits(n, 1, limit, "elements")
	}
	return n, err
}

// mapLen reads the length of a map, each entry of which takes at least two
// bytes of what is left.
func (x *decoder) mapLen() (int, error) {
	n, err := x.d.DecodeMapLen()
	if err == nil {
		err = x.fits(n, 2, math.MaxInt, "entries")
	}
	return n, err
}

// fits checks a declared length n of items of at least size bytes each.
func (x *decoder) fits(n, size, limit int, what string) error {
	switch {
	case n < 0:
		return fmt.Errorf("nil, want %s", what)
	case n > limit:
		return fmt.Errorf("%d %s, more than %d", n, what, limit)
	case n > x.r.Len()/size:
		return fmt.Errorf("%d %s declared, %d bytes left", n, what, x.r.Len())
	}
	return nil
}

// skip skips a value nested depth levels deep in what is skipped.
func (x *decoder) skip(depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("values nested more than %d deep", MaxDepth)
	}
	c, err := x.d.PeekCode()
	n := 0
	switch {
	case err != nil:
	case isArray(c):
		n, err = x.arrayLen(math.MaxInt)
	case isMap(c):
		n, err = x.mapLen()
		n *= 2
	default:
		err = x.d.Skip() // a scalar, string, binary or extension value
	}
	for ; err == nil && n > 0; n-- {
		err = x.skip(depth + 1)
	}
	return err
}

// null consumes a nil and reports whether there was one.
func (x *decoder) null() bool {
	c, err := x.d.PeekCode()
	return err == nil && c == msgpcode.Nil && x.d.DecodeNil() == nil
}

// want peeks at the next code and checks it with ok.
func (x *decoder) want(what string, ok func(byte) bool) (byte, error) {
	c, err := x.d.PeekCode()
	if err == nil && !ok(c) {
		err = fmt.Errorf("msgpack code 0x%02x, want %s", c, what)
	}
	return c, err
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isInt(c byte) bool { return msgpcode.IsFixedNum(c) || c >= msgpcode.Uint8 && c <= msgpcode.Int64 }
func isArray(c byte) bool {
	return msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32
}
func isMap(c byte) bool { return msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32 }
