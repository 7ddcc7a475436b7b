package stats

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// kvMessage is the wire form of ev, as a queue-proxy sends it.
func kvMessage(t testing.TB, ev KVEvent) []byte {
	t.Helper()
	b, err := json.Marshal(Message{Type: TypeKV, KV: &ev})
	require.NoError(t, err)
	return b
}

// hashes returns n block hashes spread over the whole uint64 range, as
// pkg/prompt's are.
func hashes(seed uint64, n int) []uint64 {
	r := rand.New(rand.NewPCG(seed, seed))
	out := make([]uint64, n)
	for i := range out {
		out[i] = r.Uint64()
	}
	return out
}

// requireSameAsJSON checks that Decode gives on data what encoding/json
// alone gives, and that the KV decoder, when it takes data, does too.
func requireSameAsJSON(t *testing.T, data []byte) (fast bool) {
	t.Helper()
	want, wantOK, wantErr := decodeJSON(data)
	got, gotOK, gotErr := Decode(data)
	require.Equal(t, want, got)
	require.Equal(t, wantOK, gotOK)
	require.Equal(t, wantErr == nil, gotErr == nil, "want error %v, got %v", wantErr, gotErr)
	if wantErr != nil {
		require.EqualError(t, gotErr, wantErr.Error())
	}
	m, handled := decodeKV(data)
	if handled {
		require.True(t, wantOK)
		require.NoError(t, wantErr)
		require.Equal(t, want, m)
	} else {
		require.Equal(t, Message{}, m)
	}
	return handled
}

func TestDecodeKVShapes(t *testing.T) {
	delta := string(kvMessage(t, KVEvent{Pod: "pod-1", BlockSize: 16, Capacity: 4096, Seq: 7,
		Added: []uint64{1, 18446744073709551615}, Removed: []uint64{0, 9223372036854775808}}))
	snapshot := string(kvMessage(t, KVEvent{Pod: "pod-1", BlockSize: 16, Seq: 1, Reset: true, Added: hashes(1, 2000)}))
	huge := string(kvMessage(t, KVEvent{Pod: "p", Seq: 1, Reset: true, Added: hashes(2, 100_000), Removed: hashes(3, 100_000)}))
	kv := func(body string) string { return `{"type":"kv","kv":{` + body + `}}` }
	for _, tc := range []struct {
		name string
		in   string
		fast bool // the KV decoder takes it
		want *KVEvent
		err  bool
	}{
		{name: "real delta", in: delta, fast: true, want: &KVEvent{Pod: "pod-1", BlockSize: 16, Capacity: 4096, Seq: 7,
			Added: []uint64{1, 18446744073709551615}, Removed: []uint64{0, 9223372036854775808}}},
		{name: "real snapshot", in: snapshot, fast: true},
		{name: "huge arrays", in: huge, fast: true},
		{name: "kv before type", in: `{"kv":{"seq":3,"pod":"a"},"type":"kv"}`, fast: true, want: &KVEvent{Pod: "a", Seq: 3}},
		{name: "reordered fields", in: kv(`"removed":[2],"reset":false,"seq":9,"added":[1],"capacity":1,"blockSize":2,"pod":"x"`),
			fast: true, want: &KVEvent{Pod: "x", BlockSize: 2, Capacity: 1, Seq: 9, Added: []uint64{1}, Removed: []uint64{2}}},
		{name: "whitespace everywhere", in: " \t\r\n{ \"type\" :\n\"kv\" , \"kv\" : { \"pod\" : \"p\" , \"added\" : [ 1 , 2 ] ,\"reset\":true } } \n",
			fast: true, want: &KVEvent{Pod: "p", Reset: true, Added: []uint64{1, 2}}},
		{name: "empty body", in: `{"type":"kv","kv":{}}`, fast: true, want: &KVEvent{}},
		{name: "empty body with space", in: `{"type":"kv","kv":{ }}`, fast: true, want: &KVEvent{}},
		{name: "empty arrays are not nil", in: kv(`"added":[],"removed":[ ]`), fast: true, want: &KVEvent{Added: []uint64{}, Removed: []uint64{}}},
		{name: "utf-8 pod", in: kv(`"pod":"pöd-日本"`), fast: true, want: &KVEvent{Pod: "pöd-日本"}},
		{name: "negative ints", in: kv(`"blockSize":-16,"capacity":-0`), fast: true, want: &KVEvent{BlockSize: -16}},
		{name: "int bounds", in: kv(`"blockSize":-9223372036854775808,"capacity":9223372036854775807`), fast: true,
			want: &KVEvent{BlockSize: -9223372036854775808, Capacity: 9223372036854775807}},
		{name: "zero", in: kv(`"seq":0,"added":[0]`), fast: true, want: &KVEvent{Added: []uint64{0}}},

		// Left to encoding/json, same result.
		{name: "invalid utf-8 pod", in: kv("\"pod\":\"p\xff\""), want: &KVEvent{Pod: "p\uFFFD"}},
		{name: "escape in key", in: `{"type":"kv","kv":{"po\u0064":"a"}}`, want: &KVEvent{Pod: "a"}},
		{name: "escape in type", in: `{"typ\u0065":"k\u0076","kv":{}}`, want: &KVEvent{}},
		{name: "escape in pod", in: kv(`"pod":"a\"b"`), want: &KVEvent{Pod: `a"b`}},
		{name: "key of another case", in: `{"TYPE":"kv","Kv":{"POD":"a","BlockSize":3}}`, want: &KVEvent{Pod: "a", BlockSize: 3}},
		{name: "key folded by Unicode", in: kv(`"ſeq":5`), want: &KVEvent{Seq: 5}},
		{name: "type of another case", in: `{"type":"KV","kv":{}}`},
		{name: "unknown key at top", in: `{"type":"kv","kv":{"seq":1},"extra":{"a":[1,{"b":null}]}}`, want: &KVEvent{Seq: 1}},
		{name: "unknown key in body", in: kv(`"seq":1,"future":[{"x":"y"}]`), want: &KVEvent{Seq: 1}},
		{name: "stat body beside", in: `{"type":"kv","kv":{"seq":1},"stat":{"pod":"p"}}`, want: &KVEvent{Seq: 1}},
		{name: "null kv", in: `{"type":"kv","kv":null}`},
		{name: "null type", in: `{"type":null,"kv":{}}`},
		{name: "null fields", in: kv(`"pod":null,"seq":null,"added":null,"removed":[1],"reset":null`), want: &KVEvent{Removed: []uint64{1}}},
		{name: "null element", in: kv(`"added":[1,null,2]`), want: &KVEvent{Added: []uint64{1, 0, 2}}},
		{name: "duplicate type", in: `{"type":"stat","type":"kv","kv":{}}`, want: &KVEvent{}},
		{name: "duplicate kv merges", in: `{"type":"kv","kv":{"seq":1,"pod":"a"},"kv":{"seq":2}}`, want: &KVEvent{Pod: "a", Seq: 2}},
		{name: "duplicate seq", in: kv(`"seq":1,"seq":2`), want: &KVEvent{Seq: 2}},
		{name: "duplicate added", in: kv(`"added":[1,2,3],"added":[4]`), want: &KVEvent{Added: []uint64{4}}},
		{name: "duplicate added emptied", in: kv(`"added":[1,2,3],"added":[]`), want: &KVEvent{Added: []uint64{}}},
		{name: "stat message", in: `{"type":"stat","stat":{"pod":"p"}}`},
		{name: "kv type without body", in: `{"type":"kv"}`},
		{name: "body without type", in: `{"kv":{"seq":1}}`},
		{name: "unknown type", in: `{"type":"future","kv":{}}`},
		{name: "empty object", in: `{}`},
		{name: "fraction", in: kv(`"seq":1.0`), err: true},
		{name: "exponent", in: kv(`"added":[1e3]`), err: true},
		{name: "negative uint", in: kv(`"added":[-1]`), err: true},
		{name: "negative zero uint", in: kv(`"seq":-0`), err: true},
		{name: "uint overflow", in: kv(`"added":[18446744073709551616]`), err: true},
		{name: "uint overflow 21 digits", in: kv(`"seq":100000000000000000000`), err: true},
		{name: "int overflow", in: kv(`"blockSize":9223372036854775808`), err: true},
		{name: "int underflow", in: kv(`"capacity":-9223372036854775809`), err: true},
		{name: "int fraction", in: kv(`"blockSize":16.5`), err: true},
		{name: "number as string", in: kv(`"seq":"1"`), err: true},
		{name: "string in array", in: kv(`"added":["1"]`), err: true},
		{name: "bool as number", in: kv(`"reset":1`), err: true},
		{name: "leading zero", in: kv(`"seq":01`), err: true},
		{name: "sign then space", in: kv(`"blockSize":- 1`), err: true},
		{name: "plus sign", in: kv(`"seq":+1`), err: true},
		{name: "trailing comma", in: kv(`"seq":1,`), err: true},
		{name: "trailing comma in array", in: kv(`"added":[1,]`), err: true},
		{name: "empty elements", in: kv(`"added":[,,,,]`), err: true},
		{name: "missing comma in array", in: kv(`"added":[1 2]`), err: true},
		{name: "literal with tail", in: kv(`"reset":truex`), err: true},
		{name: "control character in pod", in: kv("\"pod\":\"a\nb\""), err: true},
		{name: "trailing garbage", in: delta + "x", err: true},
		{name: "two messages", in: delta + delta, err: true},
		{name: "byte order mark", in: "\xef\xbb\xbf" + delta, err: true},
		{name: "unclosed array", in: kv(`"added":[1,2`), err: true},
		{name: "empty", in: ``, err: true},
		{name: "array", in: `[]`, err: true},
		{name: "null", in: `null`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.fast, requireSameAsJSON(t, []byte(tc.in)))
			m, ok, err := Decode([]byte(tc.in))
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			if tc.want != nil {
				require.True(t, ok)
				require.Equal(t, Message{Type: TypeKV, KV: tc.want}, m)
			}
		})
	}
}

// TestDecodeKVTruncated cuts real messages at every byte: each prefix is
// decoded as encoding/json decodes it (an error, all of them here).
func TestDecodeKVTruncated(t *testing.T) {
	for _, msg := range [][]byte{
		kvMessage(t, KVEvent{Pod: "pod-1", BlockSize: 16, Capacity: 100, Seq: 5, Reset: true,
			Added: []uint64{1, 18446744073709551615, 42}, Removed: []uint64{7}}),
		[]byte(" {\"kv\" : {\"added\" : [ 12 , 3 ] , \"pod\":\"p\"} , \"type\" : \"kv\" } "),
	} {
		for n := range len(msg) {
			requireSameAsJSON(t, msg[:n])
		}
	}
}

// TestDecodeKVAllocs bounds the KV decoder's allocations: the event, its
// pod and one slice each for added and removed.
func TestDecodeKVAllocs(t *testing.T) {
	data := kvMessage(t, KVEvent{Pod: "pod-1", BlockSize: 16, Seq: 1, Added: hashes(1, 2000), Removed: hashes(2, 16)})
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := decodeKV(data); !ok {
			panic("not handled")
		}
	})
	require.LessOrEqual(t, allocs, 4.0)
}

// TestDecodeKVCommasAllocateLittle: an array of commas (a forged message)
// is refused without the reader sizing a slice for them first.
func TestDecodeKVCommasAllocateLittle(t *testing.T) {
	data := []byte(`{"type":"kv","kv":{"added":[` + strings.Repeat(",", 1<<20) + `]}}`)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, ok, err := Decode(data)
	runtime.ReadMemStats(&after)
	require.False(t, ok)
	require.Error(t, err)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(256<<10), "bytes allocated for 1 MiB of commas")
}

// FuzzDecodeKV checks that Decode, with its KV decoder, gives on every
// input what encoding/json alone gives: the same message, ok and error.
// `go test` runs the seeds; `go test -fuzz FuzzDecodeKV` explores.
func FuzzDecodeKV(f *testing.F) {
	for _, ev := range []KVEvent{
		{Pod: "pod-1", BlockSize: 16, Capacity: 4096, Seq: 1, Reset: true, Added: hashes(1, 8)},
		{Pod: "pod-1", BlockSize: 16, Capacity: 4096, Seq: 2, Added: hashes(2, 3), Removed: hashes(3, 2)},
		{Pod: "p", BlockSize: -1, Capacity: -9223372036854775808, Seq: 18446744073709551615, Added: []uint64{0, 18446744073709551615}},
		{Pod: "pöd", Added: []uint64{}, Removed: []uint64{}},
		{},
	} {
		b, err := json.Marshal(Message{Type: TypeKV, KV: &ev})
		require.NoError(f, err)
		f.Add(b)
	}
	for _, s := range []string{
		`{"kv":{"removed":[1,2],"seq":9},"type":"kv"}`,
		" {\n\"type\" : \"kv\" ,\t\"kv\" : { \"added\" : [ 1 , 2 ] , \"reset\" : true } } ",
		`{"type":"kv","kv":{"po\u0064":"a","SEQ":3,"ſeq":4}}`,
		`{"type":"kv","kv":{"seq":1,"seq":2,"added":[1],"added":[]},"kv":{"pod":"b"}}`,
		`{"type":"kv","kv":{"added":[1.5,-1,1e2,18446744073709551616,null]}}`,
		`{"type":"kv","kv":{"blockSize":-9223372036854775809,"capacity":01}}`,
		`{"type":"kv","kv":{"pod":null,"reset":null,"future":{"a":[{}]}}}`,
		`{"type":"stat","stat":{"pod":"p","ready":true}}`,
		`{"type":"kv","kv":{"added":[,]}}`,
		"{\"type\":\"kv\",\"kv\":{\"pod\":\"\xff\"}}",
		`{"type":"kv","kv":{}}x`, `{"type":"kv"}`, `{}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		requireSameAsJSON(t, data)
	})
}

// BenchmarkDecodeKV decodes a delta (16 hashes added, 16 removed) and a
// snapshot (2,000 hashes) with encoding/json alone ("json", what Decode did
// before) and with Decode ("decode").
func BenchmarkDecodeKV(b *testing.B) {
	for _, bc := range []struct {
		name string
		ev   KVEvent
	}{
		{"delta16", KVEvent{Pod: "llama-00001-deployment-7d9f8b6c5-x2x7q", BlockSize: 16, Capacity: 65536, Seq: 123456,
			Added: hashes(1, 16), Removed: hashes(2, 16)}},
		{"snapshot2000", KVEvent{Pod: "llama-00001-deployment-7d9f8b6c5-x2x7q", BlockSize: 16, Capacity: 65536, Seq: 1,
			Reset: true, Added: hashes(3, 2000)}},
	} {
		data := kvMessage(b, bc.ev)
		for _, dc := range []struct {
			name   string
			decode func([]byte) (Message, bool, error)
		}{{"json", decodeJSON}, {"decode", Decode}} {
			b.Run(fmt.Sprintf("%s/%s", bc.name, dc.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if _, ok, err := dc.decode(data); !ok || err != nil {
						b.Fatal(ok, err)
					}
				}
			})
		}
	}
}

// TestDigitsEnd checks the eight-at-a-time digit scan against the plain
// one with every byte value at every position of a run of digits.
func TestDigitsEnd(t *testing.T) {
	plain := func(b []byte, i int) int {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i
	}
	for n := 0; n <= 20; n++ {
		for pos := 0; pos <= n; pos++ {
			for c := range 256 {
				b := []byte(strings.Repeat("7", n))
				if pos < n {
					b[pos] = byte(c)
				}
				for start := range min(len(b), 3) + 1 {
					require.Equal(t, plain(b, start), digitsEnd(b, start), "%q from %d", b, start)
				}
			}
		}
	}
}

// TestParseUint checks the integer reading against strconv on the edges
// and on random values of every length.
func TestParseUint(t *testing.T) {
	ins := []string{"", "0", "00", "01", "1", "9", "10", "99999999", "100000000", "12345678901234567",
		"9999999999999999999", "10000000000000000000", "18446744073709551615", "18446744073709551616",
		"18446744073709551619", "18446744073709551620", "19999999999999999999", "99999999999999999999",
		"100000000000000000000", "184467440737095516150"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10_000 {
		ins = append(ins, strconv.FormatUint(r.Uint64()>>r.IntN(64), 10))
	}
	for _, in := range ins {
		want, err := strconv.ParseUint(in, 10, 64)
		ok := err == nil && (len(in) == 1 || in[0] != '0')
		got, gotOK := parseUint([]byte(in))
		require.Equal(t, ok, gotOK, in)
		if ok {
			require.Equal(t, want, got, in)
		}
	}
}
