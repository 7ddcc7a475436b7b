package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

const eventTimeout = 10 * time.Second

// snapshot is the prefix cache's index and the number of event batches the
// scheduler has handed to its publisher, read at one instant by the
// scheduler goroutine: every change of the index up to then is in those
// batches.
type snapshot struct {
	index   map[uint64]bool
	sent    uint64
	pending int
}

type snapshotQuery struct{ reply chan snapshot }

func (q snapshotQuery) answer(s *scheduler) {
	idx := make(map[uint64]bool, len(s.kv.index))
	for h := range s.kv.index {
		idx[h] = true
	}
	q.reply <- snapshot{index: idx, sent: s.ev.sent, pending: len(s.ev.pending)}
}

func (ts *testServer) snapshot(t *testing.T) snapshot {
	t.Helper()
	q := snapshotQuery{reply: make(chan snapshot, 1)}
	select {
	case ts.sched.queries <- q:
	case <-time.After(eventTimeout):
		t.Fatal("the scheduler does not answer")
	}
	return <-q.reply
}

// follower replays the events a subscriber receives into its own copy of
// the engine's index, checking that every removal removes a resident hash
// and every store adds a new one.
type follower struct {
	batches chan kvevents.Batch
	index   map[uint64]bool
	next    uint64 // sequence number of the next batch
}

func newFollower() *follower {
	return &follower{batches: make(chan kvevents.Batch, 256), index: map[uint64]bool{}}
}

// until receives and applies batches until it has seen n of them (sequence
// numbers 0..n-1, without gaps) and returns those it received now.
func (f *follower) until(t *testing.T, n uint64) []kvevents.Batch {
	t.Helper()
	var got []kvevents.Batch
	for f.next < n {
		select {
		case b := <-f.batches:
			require.Equal(t, f.next, b.Seq, "no gap, no reordering")
			f.next++
			for _, ev := range b.Events {
				switch ev := ev.(type) {
				case kvevents.BlockStored:
					for _, h := range ev.Hashes {
						require.False(t, f.index[h.Uint64()], "stored twice: %v", h)
						f.index[h.Uint64()] = true
					}
				case kvevents.BlockRemoved:
					for _, h := range ev.Hashes {
						require.True(t, f.index[h.Uint64()], "removed but not resident: %v", h)
						delete(f.index, h.Uint64())
					}
				case kvevents.AllBlocksCleared:
					clear(f.index)
				}
			}
			got = append(got, b)
		case <-time.After(eventTimeout):
			t.Fatalf("received %d batches, want %d", f.next, n)
		}
	}
	return got
}

// sync waits until the follower has every batch the scheduler sent and
// checks that its index is the engine's. It returns the new batches'
// events, in order.
func (f *follower) sync(t *testing.T, ts *testServer) ([]kvevents.Event, snapshot) {
	t.Helper()
	snap := ts.snapshot(t)
	require.Zero(t, snap.pending, "every change is flushed before the scheduler answers")
	var events []kvevents.Event
	for _, b := range f.until(t, snap.sent) {
		require.NotEmpty(t, b.Events, "no empty batch")
		events = append(events, b.Events...)
	}
	require.Equal(t, snap.index, f.index, "the follower's index is the engine's")
	return events, snap
}

// subscribeBound follows a simulator that binds its endpoint with
// kvevents.Subscriber.
func subscribeBound(t *testing.T, endpoint, topic string, f *follower) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s := kvevents.NewSubscriber(endpoint, topic, func(b kvevents.Batch) {
		select {
		case f.batches <- b:
		case <-ctx.Done():
		}
	}, kvevents.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// bindSub binds a SUB socket to a free loopback port, as the queue-proxy
// does for an engine that connects, and feeds f; it returns the port.
func bindSub(t *testing.T, topic string, f *follower) string {
	return bindSubOn(t, "tcp://127.0.0.1:0", topic, f)
}

// bindSubOn is bindSub on endpoint.
func bindSubOn(t *testing.T, endpoint, topic string, f *follower) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewSub(ctx, zmq4.WithLogger(log.New(io.Discard, "", 0)))
	require.NoError(t, sock.SetOption(zmq4.OptionSubscribe, topic))
	require.NoError(t, sock.Listen(endpoint))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := sock.Recv()
			if ctx.Err() != nil {
				return
			}
			if err != nil || len(msg.Frames) != 3 || len(msg.Frames[1]) != 8 {
				continue
			}
			b, err := kvevents.Decode(msg.Frames[2])
			if err != nil {
				t.Errorf("decode: %v", err)
				continue
			}
			b.Topic, b.Seq = string(msg.Frames[0]), binary.BigEndian.Uint64(msg.Frames[1])
			select {
			case f.batches <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		sock.Close()
		<-done
	})
	return strconv.Itoa(sock.Addr().(*net.TCPAddr).Port)
}

// text returns n bytes of deterministic lower-case text, different for
// every seed.
func text(seed, n int) string {
	b := make([]byte, n)
	x := uint64(seed)*0x9e3779b97f4a7c15 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte('a' + x%26)
	}
	return string(b)
}

func hashesOf(vs []uint64) []kvevents.BlockHash {
	out := make([]kvevents.BlockHash, len(vs))
	for i, v := range vs {
		out[i] = kvevents.IntHash(v)
	}
	return out
}

func tokensOf(s string) []uint32 { return prompt.AppendTokens(nil, []byte(s)) }

func hashPtr(v uint64) *kvevents.BlockHash {
	h := kvevents.IntHash(v)
	return &h
}

// complete posts a completions request for one token and checks it
// succeeds; model "" leaves the model out.
func (ts *testServer) complete(t *testing.T, model, text string) {
	t.Helper()
	req := map[string]any{"prompt": text, "max_tokens": 1}
	if model != "" {
		req["model"] = model
	}
	body, err := json.Marshal(req)
	require.NoError(t, err)
	code, resp := ts.post(t, cmplPath, string(body))
	require.Equal(t, http.StatusOK, code, "%s", resp)
}

func TestKVEvents(t *testing.T) {
	t.Run("engine binds", func(t *testing.T) {
		f := newFollower()
		ts := startEventServer(t, "tcp://127.0.0.1:0")
		subscribeBound(t, "tcp://"+ts.kvPub.Addr().String(), "kv", f)
		testKVEvents(t, ts, f)
	})
	t.Run("engine connects", func(t *testing.T) {
		f := newFollower()
		port := bindSub(t, "kv", f)
		ts := startEventServer(t, "tcp://127.0.0.1:"+port)
		require.Nil(t, ts.kvPub.Addr(), "the engine connects to the subscriber's port")
		testKVEvents(t, ts, f)
	})
}

// startEventServer runs a simulator with 8 KV blocks of 4 tokens that
// publishes its KV events on endpoint under topic kv@sim.
func startEventServer(t *testing.T, endpoint string) *testServer {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.ZeroLatency = true
		c.BlockSize = 4
		c.KVBlocks = 8
		c.MaxModelLen = 32
		c.LoRAModules = []LoRAModule{{Name: "fr", Path: "/fr"}}
		c.KVEventsEndpoint = endpoint
		c.KVEventsTopic = "kv@sim"
	})
}

func testKVEvents(t *testing.T, ts *testServer, f *follower) {
	require.Eventually(t, func() bool { return slices.Contains(ts.kvPub.Topics(), "kv") },
		eventTimeout, time.Millisecond, "the subscription reaches the engine")
	const bs = 4
	gpu := func(ev kvevents.BlockStored) kvevents.BlockStored {
		ev.BlockSize, ev.Medium = bs, "GPU"
		return ev
	}

	// A: 50 bytes, 13 tokens: three full blocks become resident, the first
	// blocks of their sequence.
	a := text(1, 50)
	ha := prompt.BlockHashes([]byte(a), bs)
	require.Len(t, ha, 3)
	ts.complete(t, "sim-model", a)
	events, _ := f.sync(t, ts)
	require.Equal(t, []kvevents.Event{gpu(kvevents.BlockStored{Hashes: hashesOf(ha), TokenIDs: tokensOf(a[:48])})}, events)
	stored := events[0].(kvevents.BlockStored)
	assert.Equal(t, ha, prompt.AppendTokenBlockHashes(nil, stored.TokenIDs, stored.BlockSize),
		"the token ids hash to the published hashes")

	// B shares A's first two blocks: only its third is new, its parent A's
	// second.
	b := a[:32] + text(2, 18)
	hb := prompt.BlockHashes([]byte(b), bs)
	require.Equal(t, ha[:2], hb[:2])
	ts.complete(t, "", b)
	events, _ = f.sync(t, ts)
	require.Equal(t, []kvevents.Event{gpu(kvevents.BlockStored{Hashes: hashesOf(hb[2:]), Parent: hashPtr(ha[1]), TokenIDs: tokensOf(b[32:48])})}, events)
	stored = events[0].(kvevents.BlockStored)
	assert.Equal(t, hb[2], prompt.ChainTokens(stored.Parent.Uint64(), stored.TokenIDs),
		"the token ids chained from the parent give the hash")

	// C under the adapter fr: its hash is salted, its tokens are not.
	c := text(3, 20)
	hc := prompt.BlockHashes([]byte(c), bs)
	prompt.SaltHashes(hc, "fr")
	ts.complete(t, "fr", c)
	events, _ = f.sync(t, ts)
	require.Equal(t, []kvevents.Event{gpu(kvevents.BlockStored{Hashes: hashesOf(hc), TokenIDs: tokensOf(c[:16]), LoRAName: "fr"})}, events)
	stored = events[0].(kvevents.BlockStored)
	assert.Equal(t, hc[0], prompt.AppendTokenBlockHashes(nil, stored.TokenIDs, bs)[0]^prompt.Salt("fr"))

	// D needs 7 of the 8 blocks: the allocation evicts the cached blocks
	// least recently used first (A's third, B's third, A's second and first;
	// C's stays), and D's blocks are stored once computed.
	before := ts.snapshot(t).index
	d := text(4, 112)
	hd := prompt.BlockHashes([]byte(d), bs)
	require.Len(t, hd, 7)
	ts.complete(t, "sim-model", d)
	events, snap := f.sync(t, ts)
	require.Equal(t, []kvevents.Event{
		kvevents.BlockRemoved{Hashes: hashesOf([]uint64{ha[2], hb[2], ha[1], ha[0]}), Medium: "GPU"},
		gpu(kvevents.BlockStored{Hashes: hashesOf(hd), TokenIDs: tokensOf(d)}),
	}, events)
	var evicted []uint64
	for h := range before {
		if !snap.index[h] {
			evicted = append(evicted, h)
		}
	}
	assert.ElementsMatch(t, evicted, []uint64{ha[2], hb[2], ha[1], ha[0]}, "exactly the evicted blocks are removed")
	assert.True(t, snap.index[hc[0]])

	// A reset empties the index.
	code, body := ts.post(t, "/reset_prefix_cache", "")
	require.Equal(t, http.StatusOK, code, "%s", body)
	events, snap = f.sync(t, ts)
	require.Equal(t, []kvevents.Event{kvevents.AllBlocksCleared{}}, events)
	require.Empty(t, snap.index)

	// A chat request's blocks carry the tokens /tokenize returns for the
	// same body.
	chat := chatBody("You are terse.", "Say hi.", `"max_tokens":1`)
	code, body = ts.post(t, chatPath, chat)
	require.Equal(t, http.StatusOK, code, "%s", body)
	events, _ = f.sync(t, ts)
	code, body = ts.post(t, "/tokenize", chat)
	require.Equal(t, http.StatusOK, code, "%s", body)
	tok := decode[tokenizeResponse](t, body)
	rendered := prompt.RenderChat([]prompt.Message{{Role: "system", Content: "You are terse."}, {Role: "user", Content: "Say hi."}})
	full := len(rendered) / (bs * prompt.BytesPerToken) * bs // tokens in full blocks of text
	require.Equal(t, []kvevents.Event{gpu(kvevents.BlockStored{
		Hashes:   hashesOf(prompt.AppendTokenBlockHashes(nil, tok.Tokens[:full], bs)),
		TokenIDs: tok.Tokens[:full],
	})}, events)
}

func TestKVEventsOff(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.ZeroLatency = true
		c.BlockSize = 4
		c.KVBlocks = 8
		c.MaxModelLen = 32
	})
	require.Nil(t, ts.kvPub)
	require.Nil(t, ts.sched.ev.out)
	for i := range 4 {
		ts.complete(t, "", text(i, 112)) // every one evicts the one before
	}
	code, body := ts.post(t, "/reset_prefix_cache", "")
	require.Equal(t, http.StatusOK, code, "%s", body)
	snap := ts.snapshot(t)
	assert.Zero(t, snap.sent, "nothing is published")
	assert.Zero(t, snap.pending, "nothing is collected")
	mfs, err := ts.m.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		assert.NotEqual(t, "kvasir_sim_kv_events_dropped_total", mf.GetName())
	}
}

func TestKVEventsFlushKeepsOrDrops(t *testing.T) {
	dropped := prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"})
	var e kvEvents
	e.init(4, dropped, slog.New(slog.DiscardHandler))
	e.out = make(chan kvBatch, 1) // a publisher that does not keep up
	e.maxPending = 3

	e.removed(1)
	e.removed(2) // the same event
	e.flush()
	require.Equal(t, uint64(1), e.sent)
	e.removed(3)
	e.flush() // the queue is full: kept
	require.Equal(t, uint64(1), e.sent)
	require.Len(t, e.pending, 1)
	e.cleared()
	e.removed(4)
	e.flush() // three pending events: dropped, counted
	require.Empty(t, e.pending)
	require.Equal(t, uint64(1), e.lost)
	require.InDelta(t, 3, testutil.ToFloat64(dropped), 0)

	first := <-e.out
	require.Zero(t, first.lost)
	require.Equal(t, []kvevents.Event{kvevents.BlockRemoved{Hashes: hashesOf([]uint64{1, 2}), Medium: "GPU"}}, first.events)
	e.removed(5)
	e.flush()
	next := <-e.out
	require.Equal(t, uint64(1), next.lost, "the publisher is told to leave a gap")
	require.Equal(t, []kvevents.Event{kvevents.BlockRemoved{Hashes: hashesOf([]uint64{5}), Medium: "GPU"}}, next.events)
	require.Zero(t, e.lost)
}

func TestKVEventsMergeStoredBlocks(t *testing.T) {
	var e kvEvents
	e.init(2, prometheus.NewCounter(prometheus.CounterOpts{Name: "dropped"}), slog.New(slog.DiscardHandler))
	q := &seq{hashes: []uint64{10, 11, 12, 13}, tokenIDs: []uint32{1, 2, 3, 4, 5, 6, 7, 8}, lora: "fr"}
	r := &seq{hashes: []uint64{20}, tokenIDs: []uint32{9, 9}}
	e.stored(q, 0)
	e.stored(q, 1) // extends
	e.removed(99)
	e.stored(q, 2) // after another event: a new one, with its parent
	e.stored(r, 0)
	e.stored(q, 3) // after another sequence's
	stored := func(hs []uint64, parent *kvevents.BlockHash, tokens []uint32, lora string) kvevents.BlockStored {
		return kvevents.BlockStored{Hashes: hashesOf(hs), Parent: parent, TokenIDs: tokens, BlockSize: 2, LoRAName: lora, Medium: "GPU"}
	}
	require.Equal(t, []kvevents.Event{
		stored([]uint64{10, 11}, nil, []uint32{1, 2, 3, 4}, "fr"),
		kvevents.BlockRemoved{Hashes: hashesOf([]uint64{99}), Medium: "GPU"},
		stored([]uint64{12}, hashPtr(11), []uint32{5, 6}, "fr"),
		stored([]uint64{20}, nil, []uint32{9, 9}, ""),
		stored([]uint64{13}, hashPtr(12), []uint32{7, 8}, "fr"),
	}, e.pending)
	require.Equal(t, []uint32{1, 2, 3, 4, 5, 6, 7, 8}, q.tokenIDs, "the sequence's token ids are never written")
}

func TestResetPrefixCacheRefusedWhileBlocksAreHeld(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TimeScale = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+cmplPath,
		strings.NewReader(`{"prompt":"`+text(5, 200)+`","stream":true,"max_tokens":5000}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var first [1]byte
	_, err = io.ReadFull(resp.Body, first[:]) // the sequence is running
	require.NoError(t, err)

	code, body := ts.post(t, "/reset_prefix_cache", "")
	require.Equal(t, http.StatusConflict, code, "%s", body)
	assert.Equal(t, "prefix_cache_in_use", decode[struct {
		Error struct{ Code string } `json:"error"`
	}](t, body).Error.Code)

	cancel() // the stream ends, its blocks are released
	require.Eventually(t, func() bool {
		code, _ := ts.post(t, "/reset_prefix_cache", "")
		return code == http.StatusOK
	}, eventTimeout, time.Millisecond)
	hits, err := ts.sched.prefixMatch(context.Background(), prompt.BlockHashes([]byte(text(5, 200)), 16))
	require.NoError(t, err)
	assert.Zero(t, hits, "the reset forgot the prompt's blocks")
}

func TestKVEventFlags(t *testing.T) {
	c, err := parseFlags(t, "--kv-events-endpoint", "tcp://*:5557", "--kv_events_topic", "kv@pod")
	require.NoError(t, err)
	assert.Equal(t, "tcp://*:5557", c.KVEventsEndpoint)
	assert.Equal(t, "kv@pod", c.KVEventsTopic)
	require.NoError(t, c.Validate())

	for _, endpoint := range []string{"tcp://127.0.0.1:5557", "ipc:///tmp/kv.sock", "inproc://kv", "tcp://[::]:5557"} {
		c := DefaultConfig()
		c.KVEventsEndpoint = endpoint
		assert.NoError(t, c.Validate(), endpoint)
	}
	for _, endpoint := range []string{"127.0.0.1:5557", "http://x:1", "tcp://x", "tcp://x:99999"} {
		c := DefaultConfig()
		c.KVEventsEndpoint = endpoint
		assert.ErrorContains(t, c.Validate(), "--kv-events-endpoint", endpoint)
	}
	c = DefaultConfig()
	c.KVEventsTopic = "kv"
	assert.ErrorContains(t, c.Validate(), "--kv-events-topic")

	ts := startServer(t, nil)
	assert.Nil(t, ts.kvPub)
}

func TestMainPublishesKVEvents(t *testing.T) {
	f := newFollower()
	port := bindSub(t, "", f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result := startMain(t, ctx, "--zero-latency", "--kv-events-endpoint", "tcp://127.0.0.1:"+port, "--kv-events-topic", "kv@main")
	// Ready means subscribed: the first request's blocks arrive, as the
	// first batch.
	resp, err := http.Post(base+cmplPath, "application/json", strings.NewReader(`{"prompt":"`+text(1, 64)+`","max_tokens":1}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b := f.until(t, 1)[0]
	assert.Equal(t, "kv@main", b.Topic)
	require.NotEmpty(t, b.Events)
	cancel()
	require.NoError(t, <-result)

	err = Main(context.Background(), []string{"--kv-events-endpoint", "udp://127.0.0.1:1"}, io.Discard)
	assert.ErrorContains(t, err, "--kv-events-endpoint")
}

// An engine that connects to its subscriber is not ready before the
// subscription has come back to it: a subscriber that binds late still
// gets the first request's blocks.
func TestKVEventsWaitForTheSubscription(t *testing.T) {
	endpoint := "tcp://127.0.0.1:" + strconv.Itoa(freePort(t)) // nothing listens there yet
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := freePort(t)
	result := make(chan error, 1)
	go func() {
		result <- Main(ctx, []string{"--port", strconv.Itoa(port), "--zero-latency", "--kv-events-endpoint", endpoint}, &bytes.Buffer{})
	}()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	var body string
	require.Eventually(t, func() bool { // the HTTP server is up
		var status int
		status, body = health(base)
		return status != 0
	}, eventTimeout, 5*time.Millisecond)
	assert.Contains(t, body, "waiting for the KV-event subscriber's subscription",
		"no subscriber: not ready (within kvSubscribeWait of the start)")
	resp, err := http.Post(base+cmplPath, "application/json", strings.NewReader(`{"prompt":"x","max_tokens":1}`))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "requests wait for readiness too")

	f := newFollower()
	bindSubOn(t, endpoint, "", f)
	require.Eventually(t, func() bool {
		status, _ := health(base)
		return status == http.StatusOK
	}, eventTimeout, 5*time.Millisecond)
	resp, err = http.Post(base+cmplPath, "application/json", strings.NewReader(`{"prompt":"`+text(7, 64)+`","max_tokens":1}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b := f.until(t, 1)[0]
	assert.Zero(t, b.Seq, "nothing was published before")
	require.NotEmpty(t, b.Events)
	cancel()
	require.NoError(t, <-result)
}
