package kvevents

import (
	"bytes"
	"crypto/sha256"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// omap is a msgpack map whose entries keep their order: key, value, ...
type omap []any

func (m omap) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeMapLen(len(m) / 2); err != nil {
		return err
	}
	for _, v := range m {
		if err := e.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

// mp encodes v with the smallest integer forms, as msgspec does.
func mp(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	require.NoError(t, enc.Encode(v))
	return buf.Bytes()
}

// cat concatenates raw msgpack pieces.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func ptr[T any](v T) *T { return &v }

var (
	sha1st = sha256.Sum256([]byte("block 1"))
	sha2nd = sha256.Sum256([]byte("block 2"))
	minus7 = int64(-7)
)

// validPayloads are decodable payloads of every form, with what they decode to.
func validPayloads(t testing.TB) []struct {
	name    string
	payload []byte
	want    Batch
} {
	return []struct {
		name    string
		payload []byte
		want    Batch
	}{{
		name: "vLLM array form, integer hashes, newer trailing fields",
		payload: mp(t, []any{1.5, []any{
			[]any{"BlockStored", []any{1, 2}, uint64(math.MaxUint64), []any{10, 11, 12, 13}, 2, nil, "GPU", nil, nil, 0, "full_attention", nil},
		}, 0}),
		want: Batch{Time: 1.5, DPRank: 0, Events: []Event{BlockStored{
			Hashes: []BlockHash{IntHash(1), IntHash(2)}, Parent: ptr(IntHash(math.MaxUint64)),
			TokenIDs: []uint32{10, 11, 12, 13}, BlockSize: 2, Medium: "GPU",
		}}},
	}, {
		name: "byte hashes, nil parent, LoRA, nil rank",
		payload: mp(t, []any{2.0, []any{
			[]any{"BlockStored", []any{sha1st[:], sha2nd[:]}, nil, []any{1, 2}, 1, 7, nil, "sql-lora"},
		}, nil}),
		want: Batch{Time: 2, DPRank: -1, Events: []Event{BlockStored{
			Hashes:   []BlockHash{BytesHash(sha1st[:]), BytesHash(sha2nd[:])},
			TokenIDs: []uint32{1, 2}, BlockSize: 1, LoRAID: ptr(7), LoRAName: "sql-lora",
		}}},
	}, {
		name: "removed and cleared, integer time, signed hash, no rank",
		payload: mp(t, []any{3, []any{
			[]any{"BlockRemoved", []any{1, minus7}, "CPU", 0},
			[]any{"AllBlocksCleared"},
		}}),
		want: Batch{Time: 3, DPRank: -1, Events: []Event{
			BlockRemoved{Hashes: []BlockHash{IntHash(1), IntHash(uint64(minus7))}, Medium: "CPU"},
			AllBlocksCleared{},
		}},
	}, {
		name: "SGLang: trailing defaults omitted, salted metadata",
		payload: mp(t, []any{float32(4.5), []any{
			[]any{"BlockStored", []any{5}, 4, []any{1}, 1},
			[]any{"BlockStored", []any{minus7}, minus7, []any{2}, 1, nil, "GPU", omap{"cache_salt", "s"}},
			[]any{"BlockRemoved", []any{5}},
		}, 3}),
		want: Batch{Time: 4.5, DPRank: 3, Events: []Event{
			BlockStored{Hashes: []BlockHash{IntHash(5)}, Parent: ptr(IntHash(4)), TokenIDs: []uint32{1}, BlockSize: 1},
			BlockStored{Hashes: []BlockHash{IntHash(uint64(minus7))}, Parent: ptr(IntHash(uint64(minus7))),
				TokenIDs: []uint32{2}, BlockSize: 1, Medium: "GPU"},
			BlockRemoved{Hashes: []BlockHash{IntHash(5)}},
		}},
	}, {
		name: "vLLM map events, type first or last, unknown fields",
		payload: mp(t, []any{5.0, []any{
			omap{"type", "BlockStored", "block_hashes", []any{sha1st[:]}, "parent_block_hash", nil, "token_ids", []any{1, 2},
				"block_size", 2, "lora_id", nil, "medium", "GPU", "lora_name", nil, "extra_keys", []any{[]any{[]any{"lora", "x"}}},
				"event_version", 1, "group_idx", 0, "when", time.Unix(1, 0)},
			omap{"block_hashes", []any{1}, "medium", "GPU", "locality", omap{"a", omap{"b", []any{1}}}, "type", "BlockRemoved"},
			omap{"type", "AllBlocksCleared"},
		}, 0}),
		want: Batch{Time: 5, DPRank: 0, Events: []Event{
			BlockStored{Hashes: []BlockHash{BytesHash(sha1st[:])}, TokenIDs: []uint32{1, 2}, BlockSize: 2, Medium: "GPU"},
			BlockRemoved{Hashes: []BlockHash{IntHash(1)}, Medium: "GPU"},
			AllBlocksCleared{},
		}},
	}, {
		name: "map batch",
		payload: mp(t, omap{"extra", omap{"x", []any{1, "y"}}, "ts", 6.5, "events", []any{[]any{"AllBlocksCleared"}},
			"data_parallel_rank", 2}),
		want: Batch{Time: 6.5, DPRank: 2, Events: []Event{AllBlocksCleared{}}},
	}, {
		name: "unknown event types left out",
		payload: mp(t, []any{7.0, []any{
			[]any{"BlockMoved", 1, []any{2}},
			omap{"type", "Future", "x", 1},
			[]any{"AllBlocksCleared", "extra"},
		}, nil, "more"}),
		want: Batch{Time: 7, DPRank: -1, Events: []Event{AllBlocksCleared{}}},
	}, {
		name: "wide integer forms",
		payload: func() []byte {
			b, err := msgpack.Marshal([]any{8.0, []any{
				[]any{"BlockStored", []uint64{1}, int64(2), []uint32{3}, int64(4), int64(-1), "GPU"},
			}, int64(1)})
			require.NoError(t, err)
			return b
		}(),
		want: Batch{Time: 8, DPRank: 1, Events: []Event{
			BlockStored{Hashes: []BlockHash{IntHash(1)}, Parent: ptr(IntHash(2)), TokenIDs: []uint32{3}, BlockSize: 4,
				LoRAID: ptr(-1), Medium: "GPU"},
		}},
	}, {
		name:    "no events",
		payload: mp(t, []any{9.0, []any{}}),
		want:    Batch{Time: 9, DPRank: -1, Events: []Event{}},
	}}
}

func TestDecode(t *testing.T) {
	for _, tc := range validPayloads(t) {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(tc.payload)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	nest := func(n int) []byte { return append(bytes.Repeat([]byte{0x91}, n), 0xc0) }
	stored := func(fields ...any) []byte {
		return mp(t, []any{1.0, []any{append([]any{"BlockStored"}, fields...)}})
	}
	ts := mp(t, 1.0)
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"empty", nil},
		{"not a batch", mp(t, 1)},
		{"batch of one element", mp(t, []any{1.0})},
		{"map batch without events", mp(t, omap{"ts", 1.0})},
		{"map batch key not a string", mp(t, omap{1, 1.0, "events", []any{}})},
		{"time a string", mp(t, []any{"now", []any{}})},
		{"time nil", mp(t, []any{nil, []any{}})},
		{"events not an array", mp(t, []any{1.0, 5})},
		{"events nil", mp(t, []any{1.0, nil})},
		{"rank a string", mp(t, []any{1.0, []any{}, "0"})},
		{"rank negative", mp(t, []any{1.0, []any{}, -2})},
		{"event a number", mp(t, []any{1.0, []any{5}})},
		{"event empty", mp(t, []any{1.0, []any{[]any{}}})},
		{"event type not a string", mp(t, []any{1.0, []any{[]any{5}}})},
		{"map event without type", mp(t, []any{1.0, []any{omap{"block_hashes", []any{1}}}})},
		{"map event type nil", mp(t, []any{1.0, []any{omap{"type", nil}}})},
		{"stored without hashes", stored()},
		{"removed without hashes", mp(t, []any{1.0, []any{omap{"type", "BlockRemoved", "medium", "GPU"}}})},
		{"hashes nil", stored(nil)},
		{"hash a float", stored([]any{1.5})},
		{"hash nil", stored([]any{nil})},
		{"hash too long", stored([]any{make([]byte, MaxHashLen+1)})},
		{"parent a list", stored([]any{1}, []any{1}, []any{1}, 1)},
		{"tokens nil", stored([]any{1}, nil, nil, 1)},
		{"token negative", stored([]any{1}, nil, []any{-1}, 1)},
		{"token too large", stored([]any{1}, nil, []any{uint64(1) << 32}, 1)},
		{"token nil", stored([]any{1}, nil, []any{nil}, 1)},
		{"block size negative", stored([]any{1}, nil, []any{1}, -1)},
		{"block size a float", stored([]any{1}, nil, []any{1}, 1.0)},
		{"block size huge", stored([]any{1}, nil, []any{1}, uint64(math.MaxUint64))},
		{"lora id a string", stored([]any{1}, nil, []any{1}, 1, "a")},
		{"medium a number", stored([]any{1}, nil, []any{1}, 1, nil, 1)},
		{"trailing bytes", append(mp(t, []any{1.0, []any{}}), 0xc0)},
		{"invalid code in a skipped field", cat([]byte{0x94}, ts, mp(t, []any{}), []byte{0xc0, 0xc1})},
		{"batch of 2^32-1 elements", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}},
		{"map batch of 2^32-1 entries", []byte{0xdf, 0xff, 0xff, 0xff, 0xff}},
		{"2^32-1 events", cat([]byte{0x92}, ts, []byte{0xdd, 0xff, 0xff, 0xff, 0xff})},
		{"type of 2^32-1 bytes", cat([]byte{0x92}, ts, []byte{0x91, 0x91, 0xdb, 0xff, 0xff, 0xff, 0xff}, []byte("BlockStored"))},
		{"hash of 2^32-1 bytes", cat([]byte{0x92}, ts, []byte{0x91, 0x92}, mp(t, "BlockRemoved"), []byte{0x91, 0xc6, 0xff, 0xff, 0xff, 0xff, 1})},
		{"more than MaxEvents", mp(t, []any{1.0, make([]any, MaxEvents+1)})},
		{"more than MaxBlocks", stored(make([]any, MaxBlocks+1))},
		{"more than MaxTokens", stored([]any{1}, nil, make([]any, MaxTokens+1), 1)},
		{"skipped value nested too deep", cat([]byte{0x94}, ts, mp(t, []any{}), []byte{0xc0}, nest(MaxDepth+1))},
		{"skipped value nested a million deep", cat([]byte{0x94}, ts, mp(t, []any{}), []byte{0xc0}, nest(1<<20))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.payload)
			require.Error(t, err)
			require.ErrorContains(t, err, "kvevents: decode: ")
		})
	}
}

func TestDecodeNestingWithinLimit(t *testing.T) {
	deep := append(bytes.Repeat([]byte{0x91}, MaxDepth-1), 0xc0)
	payload := cat([]byte{0x94}, mp(t, 1.0), mp(t, []any{}), []byte{0xc0}, deep)
	_, err := Decode(payload)
	require.NoError(t, err)
}

func TestDecodeTruncated(t *testing.T) {
	for _, tc := range validPayloads(t) {
		for n := range len(tc.payload) {
			_, err := Decode(tc.payload[:n])
			require.Error(t, err, "%s, first %d bytes", tc.name, n)
		}
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	for _, tc := range validPayloads(t) {
		t.Run(tc.name, func(t *testing.T) {
			payload, err := Encode(tc.want)
			require.NoError(t, err)
			got, err := Decode(payload)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	// Nil slices travel as empty arrays, an empty byte hash as one.
	payload, err := Encode(Batch{Events: []Event{BlockStored{}, BlockRemoved{Hashes: []BlockHash{BytesHash(nil)}}}})
	require.NoError(t, err)
	got, err := Decode(payload)
	require.NoError(t, err)
	require.Equal(t, Batch{DPRank: 0, Events: []Event{
		BlockStored{Hashes: []BlockHash{}, TokenIDs: []uint32{}}, BlockRemoved{Hashes: []BlockHash{BytesHash(nil)}},
	}}, got)
}

func TestEncodeRefuses(t *testing.T) {
	for name, b := range map[string]Batch{
		"nil event":          {Events: []Event{nil}},
		"pointer event":      {Events: []Event{&BlockRemoved{}}},
		"too many events":    {Events: make([]Event, MaxEvents+1)},
		"too many hashes":    {Events: []Event{BlockRemoved{Hashes: make([]BlockHash, MaxBlocks+1)}}},
		"too many tokens":    {Events: []Event{BlockStored{TokenIDs: make([]uint32, MaxTokens+1)}}},
		"hash too long":      {Events: []Event{BlockRemoved{Hashes: []BlockHash{BytesHash(make([]byte, MaxHashLen+1))}}}},
		"parent too long":    {Events: []Event{BlockStored{Parent: ptr(BytesHash(make([]byte, MaxHashLen+1)))}}},
		"second event fails": {Events: []Event{AllBlocksCleared{}, nil}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Encode(b)
			require.ErrorContains(t, err, "kvevents: encode: ")
		})
	}
}

func TestBlockHash(t *testing.T) {
	b := BytesHash(sha1st[:])
	require.True(t, b.IsBytes())
	require.Equal(t, sha1st[:], b.Bytes())
	require.Equal(t, uint64(sha1st[24])<<56|uint64(sha1st[25])<<48|uint64(sha1st[26])<<40|uint64(sha1st[27])<<32|
		uint64(sha1st[28])<<24|uint64(sha1st[29])<<16|uint64(sha1st[30])<<8|uint64(sha1st[31]), b.Uint64())
	require.Equal(t, uint64(0x0102), BytesHash([]byte{1, 2}).Uint64())
	require.Equal(t, "0x0102", BytesHash([]byte{1, 2}).String())

	i := IntHash(42)
	require.False(t, i.IsBytes())
	require.Nil(t, i.Bytes())
	require.Equal(t, uint64(42), i.Uint64())
	require.Equal(t, "42", i.String())
	require.Equal(t, IntHash(0), BlockHash{})

	// Comparable, and an integer is not the byte string of the same value.
	set := map[BlockHash]bool{IntHash(0x0102): true, BytesHash(sha1st[:]): true}
	require.True(t, set[BytesHash(bytes.Clone(sha1st[:]))])
	require.False(t, set[BytesHash([]byte{1, 2})])
	require.False(t, set[IntHash(1)])
}

// FuzzDecode checks that Decode never panics, and that what it accepts
// survives Encode and Decode again unchanged.
func FuzzDecode(f *testing.F) {
	for _, tc := range validPayloads(f) {
		f.Add(tc.payload)
	}
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add(mp(f, []any{1.0, []any{[]any{"BlockStored", []any{nil}}}}))
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := Decode(payload)
		if err != nil {
			return
		}
		again, err := Encode(b)
		require.NoError(t, err)
		b2, err := Decode(again)
		require.NoError(t, err)
		require.Equal(t, math.Float64bits(b.Time), math.Float64bits(b2.Time))
		b.Time, b2.Time = 0, 0
		require.Equal(t, b, b2)
	})
}
