package queueproxy

import (
	"encoding/binary"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"testing"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

// engineEvents is an engine's KV-event publisher as vLLM runs it beside a
// queue-proxy that binds: a PUB socket that connects.
type engineEvents struct {
	t    *testing.T
	sock zmq4.Socket
	seq  uint64
}

func newEngineEvents(t *testing.T, endpoint string) *engineEvents {
	t.Helper()
	sock := zmq4.NewPub(t.Context())
	t.Cleanup(func() { _ = sock.Close() })
	require.Eventually(t, func() bool { return sock.Dial(endpoint) == nil }, waitFor, tick)
	// Wait until the queue-proxy's subscription reached the socket, so that
	// nothing published is dropped.
	require.Eventually(t, func() bool { return slices.Contains(sock.(zmq4.Topics).Topics(), "") }, waitFor, tick)
	return &engineEvents{t: t, sock: sock}
}

func (e *engineEvents) publish(events ...kvevents.Event) {
	e.t.Helper()
	payload, err := kvevents.Encode(kvevents.Batch{Time: 1, DPRank: 0, Events: events})
	require.NoError(e.t, err)
	require.NoError(e.t, e.sock.Send(zmq4.NewMsgFrom([]byte("kv@pod"), binary.BigEndian.AppendUint64(nil, e.seq), payload)))
	e.seq++
}

func loopbackEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return "tcp://127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// tokens returns n*bs token ids starting at first.
func tokens(first, n int) []uint32 {
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = uint32(first + i)
	}
	return ids
}

func hashes(vs ...uint64) []kvevents.BlockHash {
	out := make([]kvevents.BlockHash, len(vs))
	for i, v := range vs {
		out[i] = kvevents.IntHash(v)
	}
	return out
}

// The queue-proxy follows its engine's own events: the keys it streams are
// the routers' keys of the same tokens, removals and clears are the
// engine's, and a gap starts the set over.
func TestKVEventsFollowed(t *testing.T) {
	const bs = 4
	eng := newEngine(t, nil)
	endpoint := loopbackEndpoint(t)
	p := newProxy(t, eng.URL, true, "--kv-events-endpoint="+endpoint, "--kv-events-bind", "--kv-flush-interval=1ms")
	f := followKV(t, p.srv.URL)
	ev := newEngineEvents(t, endpoint)

	// Two blocks of one sequence, then a third stored under the second as
	// parent (a longer prompt with the same prefix), and an adapter's block.
	a := tokens(100, 3*bs)
	parent := kvevents.IntHash(11)
	ev.publish(kvevents.BlockStored{Hashes: hashes(10, 11), TokenIDs: a[:2*bs], BlockSize: bs, Medium: "GPU"})
	ev.publish(kvevents.BlockStored{Hashes: hashes(12), Parent: &parent, TokenIDs: a[2*bs:], BlockSize: bs, Medium: "GPU"})
	zero := kvevents.IntHash(0) // no parent, as llm-d-inference-sim says it
	ev.publish(kvevents.BlockStored{Hashes: hashes(20), Parent: &zero, TokenIDs: a[:bs], BlockSize: bs, LoRAName: "fr"})

	keys := prompt.AppendTokenBlockHashes(nil, a, bs)
	frKey := keys[0] ^ prompt.Salt("fr")
	want := func(ks ...uint64) func() bool {
		return func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.started && maps.Equal(f.blocks, set(ks...))
		}
	}
	require.Eventually(t, want(keys[0], keys[1], keys[2], frKey), waitFor, tick)

	// The same blocks offloaded to CPU and evicted from GPU stay resident.
	ev.publish(kvevents.BlockStored{Hashes: hashes(12), Parent: &parent, TokenIDs: a[2*bs:], BlockSize: bs, Medium: "CPU"})
	ev.publish(kvevents.BlockRemoved{Hashes: hashes(12, 20), Medium: "GPU"})
	require.Eventually(t, want(keys[0], keys[1], keys[2]), waitFor, tick)
	ev.publish(kvevents.BlockRemoved{Hashes: hashes(12, 999), Medium: "CPU"}) // 999: never stored
	require.Eventually(t, want(keys[0], keys[1]), waitFor, tick)

	// A block under an unknown parent has no key: skipped and counted.
	unknown := kvevents.IntHash(404)
	ev.publish(kvevents.BlockStored{Hashes: hashes(30), Parent: &unknown, TokenIDs: tokens(7, bs), BlockSize: bs})
	// A malformed one (fewer token ids than blocks need) too.
	ev.publish(kvevents.BlockStored{Hashes: hashes(31, 32), TokenIDs: tokens(7, bs), BlockSize: bs})
	ev.publish(kvevents.AllBlocksCleared{})
	require.Eventually(t, want(), waitFor, tick)
	assert.Equal(t, 2.0, testutil.ToFloat64(p.metrics.kvEventsSkipped.WithLabelValues(skipMalformed)))
	assert.Equal(t, 1.0, testutil.ToFloat64(p.metrics.kvEventsSkipped.WithLabelValues(skipUnknownParent)))
	assert.Equal(t, 6.0, testutil.ToFloat64(p.metrics.kvEvents.WithLabelValues("stored")))
	assert.Equal(t, 2.0, testutil.ToFloat64(p.metrics.kvEvents.WithLabelValues("removed")))
	assert.Equal(t, 1.0, testutil.ToFloat64(p.metrics.kvEvents.WithLabelValues("cleared")))

	// Stored again, then a gap: batches were lost, so the set starts over.
	ev.publish(kvevents.BlockStored{Hashes: hashes(10), TokenIDs: a[:bs], BlockSize: bs})
	require.Eventually(t, want(keys[0]), waitFor, tick)
	ev.seq += 3
	ev.publish(kvevents.BlockStored{Hashes: hashes(40), TokenIDs: tokens(500, bs), BlockSize: bs})
	require.Eventually(t, want(prompt.AppendTokenBlockHashes(nil, tokens(500, bs), bs)...), waitFor, tick)
	assert.Equal(t, 1.0, testutil.ToFloat64(p.metrics.kvEventGaps))
	assert.Equal(t, 1, p.KVBlocks())
}

// For the simulator's deterministic tokenizer, the keys of the engine's
// events are the keys the routers compute from the prompt text: routing
// needs no tokenizer of its own.
func TestKVEventKeysMatchTextKeys(t *testing.T) {
	text := []byte("<|user|>\nthe same long system prompt, then a question about it\n<|assistant|>\n")
	const bs = 4
	f := &kvFollower{blocks: map[kvevents.BlockHash]followed{}, held: map[uint64]int32{}, deltas: newKVDeltas("p"),
		limit: 100, events: newMetrics(&Proxy{}).kvEvents, skipped: newMetrics(&Proxy{}).kvEventsSkipped}
	toks := prompt.AppendTokens(nil, text)
	n := len(text) / (bs * prompt.BytesPerToken)
	hs := make([]kvevents.BlockHash, n)
	for i := range hs {
		hs[i] = kvevents.IntHash(uint64(i + 1))
	}
	f.handle(kvevents.Batch{Events: []kvevents.Event{kvevents.BlockStored{Hashes: hs, TokenIDs: toks[:n*bs], BlockSize: bs, LoRAName: "x"}}})
	want := prompt.BlockHashes(text, bs)
	prompt.SaltHashes(want, "x")
	require.Equal(t, set(want...), set(f.appendAll(nil)...))
}

// Blocks an engine names only by vLLM's deprecated lora_id cannot be keyed
// as the routers key adapters (by name): they are skipped, not taken for
// the base model's. An engine restart empties the set.
func TestKVEventsLoRAIDOnlyAndRestart(t *testing.T) {
	m := newMetrics(&Proxy{})
	f := &kvFollower{log: slog.New(slog.DiscardHandler), blocks: map[kvevents.BlockHash]followed{}, held: map[uint64]int32{},
		deltas: newKVDeltas("p"), limit: 100, events: m.kvEvents, skipped: m.kvEventsSkipped}
	id := 3
	f.handle(kvevents.Batch{Events: []kvevents.Event{
		kvevents.BlockStored{Hashes: hashes(1), TokenIDs: tokens(1, 4), BlockSize: 4, LoRAID: &id},
		kvevents.BlockStored{Hashes: hashes(2), TokenIDs: tokens(9, 4), BlockSize: 4},
	}})
	require.Equal(t, 1.0, testutil.ToFloat64(m.kvEventsSkipped.WithLabelValues(skipLoRAIDOnly)))
	require.Equal(t, 1, f.len())
	f.restarted()
	require.Zero(t, f.len())
	require.Zero(t, f.size())
}
