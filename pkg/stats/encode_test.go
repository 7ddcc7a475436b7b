package stats

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestAppendKVMessageIsWhatEncodingJSONWrites(t *testing.T) {
	for _, ev := range []KVEvent{
		{},
		{Pod: "p-0", BlockSize: 16, Capacity: 4096, Seq: 7},
		{Pod: "p", Seq: math.MaxUint64, Reset: true, Added: []uint64{0, 1, math.MaxUint64}},
		{Pod: "p", BlockSize: -1, Capacity: math.MinInt64, Removed: []uint64{42}},
		{Pod: "p", Added: []uint64{}, Removed: []uint64{}},
		{Pod: `a"b\c<d>&e` + "\x00\x1f\u2028é\xff", Added: []uint64{3}, Removed: []uint64{4, 5}},
	} {
		want, err := json.Marshal(Message{Type: TypeKV, KV: &ev})
		require.NoError(t, err)
		require.Equal(t, string(want), string(AppendKVMessage(nil, &ev)))
	}
}

func FuzzAppendKVMessage(f *testing.F) {
	f.Add("pod", 16, 100, uint64(3), true, uint64(1), uint64(2))
	f.Add("p\"<\xff", -1, 0, uint64(0), false, uint64(math.MaxUint64), uint64(0))
	f.Fuzz(func(t *testing.T, pod string, bs, capacity int, seq uint64, reset bool, a, r uint64) {
		ev := KVEvent{Pod: pod, BlockSize: bs, Capacity: capacity, Seq: seq, Reset: reset}
		if a%3 != 0 {
			ev.Added = []uint64{a, a >> 7}
		}
		if r%2 != 0 {
			ev.Removed = []uint64{r}
		}
		want, err := json.Marshal(Message{Type: TypeKV, KV: &ev})
		require.NoError(t, err)
		require.Equal(t, string(want), string(AppendKVMessage(nil, &ev)))
	})
}
