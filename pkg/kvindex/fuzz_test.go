package kvindex

import (
	"bytes"
	"log/slog"
	"math/bits"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// FuzzApply feeds an index the KV events of a stats stream, one message a
// line, as the activator's subscribers do (stats.Decode, then Apply), for
// pods "a" and "b" (and "c", which the index does not know), and checks the
// index's invariants after each. A line that is not JSON is read as a
// compact event (compactEvent), which random mutation keeps valid far more
// often than JSON, so that the index's states are explored too. `go test` runs the seeds (f.Add and
// testdata/fuzz/FuzzApply/); `make fuzz` explores.
func FuzzApply(f *testing.F) {
	f.Add([]byte(`{"type":"kv","kv":{"pod":"a","blockSize":4,"capacity":2,"seq":1,"reset":true,"added":[1,2,3]}}
{"type":"kv","kv":{"pod":"a","blockSize":4,"seq":2,"removed":[1,2,2,9],"added":[3,4,4]}}
{"type":"kv","kv":{"pod":"b","blockSize":4,"seq":7,"reset":true,"added":[2,3]}}
{"type":"kv","kv":{"pod":"a","blockSize":4,"seq":4,"added":[5]}}
{"type":"kv","kv":{"pod":"a","blockSize":4,"seq":1,"reset":true,"removed":[3],"added":[3]}}
{"type":"kv","kv":{"pod":"b","blockSize":8,"seq":8,"added":[1]}}
{"type":"stat","stat":{"pod":"a"}}
{"type":"kv","kv":{"pod":"c","blockSize":4,"seq":1,"reset":true,"added":[1]}}`))
	f.Add([]byte(`{"type":"kv","kv":{"pod":"b","blockSize":4,"capacity":-5,"seq":1,"reset":true,"added":[]}}
{"type":"kv","kv":{"pod":"b","blockSize":0,"seq":2,"added":[1]}}
{"type":"kv","kv":{"pod":"b","blockSize":4,"seq":2,"removed":[0],"added":[0]}}
not json`))
	f.Fuzz(func(t *testing.T, stream []byte) {
		now := time.Unix(0, 0)
		ix := New(slog.New(slog.DiscardHandler), WithClock(func() time.Time { return now }))
		ix.AddPod("a")
		ix.AddPod("b")
		var known []uint64
		for line := range bytes.SplitSeq(stream, []byte("\n")) {
			ev, ok := compactEvent(line)
			if m, isMsg, err := stats.Decode(line); err == nil {
				if !isMsg || m.KV == nil {
					continue
				}
				ev, ok = *m.KV, true
			}
			if !ok {
				continue
			}
			known = append(known, ev.Added...)
			known = append(known, ev.Removed...)
			ix.Apply(ev)
			checkInvariants(t, ix)
			if slot, ok := ix.Pod("a"); ok {
				ix.Speculate(slot.Slot, ev.Removed, time.Second) // a routing guess
			}
			now = now.Add(600 * time.Millisecond)
			checkInvariants(t, ix)
		}
		slices.Sort(known)
		ix.Match(known, new([MaxPods]int))
		ix.MatchWithEvicted(known, new([MaxPods]int), new([MaxPods]int))
	})
}

// checkInvariants checks what the index's methods rely on: each pod's
// count of confirmed blocks, no empty entries, bits only for pods in use,
// an evicted mark only for a remembered eviction, and the memory bound.
func checkInvariants(t *testing.T, ix *Index) {
	t.Helper()
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	counts := map[int]int{}
	for h, e := range ix.blocks {
		require.NotZero(t, e.held|e.spec|e.was, "empty entry %d kept", h)
		require.Zero(t, (e.held|e.spec|e.was)&^ix.used, "block %d has bits of slots not in use", h)
		for held := e.held; held != 0; held &= held - 1 {
			counts[bits.TrailingZeros64(held)]++
		}
		for was := e.was; was != 0; was &= was - 1 {
			p := ix.slots[bits.TrailingZeros64(was)]
			require.Contains(t, p.evicted, h, "block %d marked evicted by %s, not remembered", h, p.name)
		}
	}
	for name, p := range ix.pods {
		require.Equal(t, counts[p.slot], p.blocks, "pod %s", name)
		require.LessOrEqual(t, len(p.evicted), p.maxEvicted(), "pod %s", name)
		if !p.synced {
			require.Zero(t, p.blocks, "pod %s holds blocks while not in sync", name)
		}
	}
}

// compactEvent reads a line of bytes as a KV event: byte 0 picks the pod
// (bits 0-1: a, b, c) and the kind (bit 2: snapshot), byte 1 the seq (the
// low 3 bits), byte 2 the block size (bit 0: 4 or 8); each further byte is
// a block (its low 4 bits: 16 hashes, so that events meet) added, or
// removed when its high bit is set.
func compactEvent(b []byte) (stats.KVEvent, bool) {
	if len(b) < 3 {
		return stats.KVEvent{}, false
	}
	ev := stats.KVEvent{
		Pod:       []string{"a", "b", "c", "a"}[b[0]&3],
		Reset:     b[0]&4 != 0,
		Seq:       uint64(b[1] & 7),
		BlockSize: 4 << (b[2] & 1),
		Capacity:  int(b[2] >> 1),
	}
	for _, c := range b[3:] {
		if c&0x80 != 0 {
			ev.Removed = append(ev.Removed, uint64(c&15))
		} else {
			ev.Added = append(ev.Added, uint64(c&15))
		}
	}
	return ev, true
}
