package queueproxy

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
)

// testBS is the block size of the unit tests.
const testBS = 16

// newTestKV is a KV model with the given capacity at block size testBS, on
// a hub of its own.
func newTestKV(t *testing.T, capacity int) (*kvModel, *hub) {
	t.Helper()
	h := newHub(slog.New(slog.DiscardHandler))
	cfg := Config{PodName: "pod-1", KVBlockSize: testBS, KVCapacityBlocks: capacity}
	m := newKVModel(cfg, h, prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}), slog.New(slog.DiscardHandler))
	require.NotNil(t, m.shape.Load())
	return m, h
}

// ticketFor is a ticket for a prompt with these block hashes and one more
// token (a partial block), as prepare would make it.
func ticketFor(m *kvModel, hashes ...uint64) *kvTicket {
	sh := m.shape.Load()
	return &kvTicket{epoch: sh.epoch, bs: sh.blockSize, tokens: len(hashes)*sh.blockSize + 1, hashes: slices.Clone(hashes)}
}

// served is the usage of a served prompt of n full blocks plus one token of
// which cached blocks were found in the engine's cache.
func served(n, cached int) *openai.Usage {
	u := &openai.Usage{PromptTokens: uint64(n*testBS + 1)}
	u.PromptTokensDetails = &struct {
		CachedTokens uint64 `json:"cached_tokens"`
	}{uint64(cached * testBS)}
	return u
}

// serve sends a prompt through the model and finishes it as served with
// cached blocks found.
func serve(m *kvModel, cached int, hashes ...uint64) {
	t := ticketFor(m, hashes...)
	m.sent(t)
	m.finish(t, kvServed, served(len(hashes), cached))
}

// state is the model's last sent seq and its blocks, least recent first.
func (m *kvModel) state() (uint64, []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.deltas.seq, m.appendHashesLocked(nil)
}

func set(hashes ...uint64) map[uint64]struct{} {
	s := make(map[uint64]struct{}, len(hashes))
	for _, h := range hashes {
		s[h] = struct{}{}
	}
	return s
}

func TestKVModelLRU(t *testing.T) {
	m, _ := newTestKV(t, 4)
	serve(m, 0, 1, 2) // touched last block first: 1 is the more recent
	serve(m, 0, 3, 4)
	assert.Equal(t, []uint64{2, 1, 4, 3}, m.hashes())

	serve(m, 1, 1) // touch
	assert.Equal(t, []uint64{2, 4, 3, 1}, m.hashes())
	serve(m, 0, 5) // insert at capacity: the least recent (2) goes
	assert.Equal(t, []uint64{4, 3, 1, 5}, m.hashes())
	assert.Equal(t, 4, m.len())

	// A request in flight counts at once.
	tk := ticketFor(m, 6)
	m.sent(tk)
	assert.Equal(t, []uint64{3, 1, 5, 6}, m.hashes())
	assert.Equal(t, 0, tk.p)
	m.finish(tk, kvServed, nil)

	// A prompt longer than the capacity keeps its first blocks.
	serve(m, 0, 7, 8, 9, 10, 11)
	assert.Equal(t, []uint64{10, 9, 8, 7}, m.hashes())
	assert.Zero(t, testutil.ToFloat64(m.corrections))
}

func TestKVPrediction(t *testing.T) {
	m, _ := newTestKV(t, 100)
	serve(m, 0, 1, 2, 3)
	tk := ticketFor(m, 1, 2, 9, 3) // 3 is held but not as part of the leading run
	m.sent(tk)
	assert.Equal(t, 2, tk.p)
	m.finish(tk, kvServed, served(4, 2))
	assert.Zero(t, testutil.ToFloat64(m.corrections))
}

func TestKVCorrectionRemovesOlderBlocks(t *testing.T) {
	m, _ := newTestKV(t, 100)
	serve(m, 0, 0xa0, 0xa1)       // Z
	serve(m, 0, 1, 2, 3)          // A
	serve(m, 0, 0xb0, 0xb1)       // B
	serve(m, 0, 0xc0, 0xc1, 0xc2) // C
	require.Equal(t, []uint64{0xa1, 0xa0, 3, 2, 1, 0xb1, 0xb0, 0xc2, 0xc1, 0xc0}, m.hashes())

	// A again: the engine had only its first block. So block 2 (the
	// model's a=1) was evicted, and with it everything less recently used
	// than it: Z, and A's block 3, which this request computes again.
	serve(m, 1, 1, 2, 3)
	assert.Equal(t, []uint64{0xb1, 0xb0, 0xc2, 0xc1, 0xc0, 3, 2, 1}, m.hashes())
	assert.Equal(t, 1.0, testutil.ToFloat64(m.corrections))

	// A request that found what the model predicted corrects nothing.
	serve(m, 2, 0xb0, 0xb1)
	assert.Equal(t, 1.0, testutil.ToFloat64(m.corrections))
	assert.Equal(t, 8, m.len())

	// More cached than predicted: nothing to remove either.
	serve(m, 2, 0xd0, 0xd1)
	assert.Equal(t, 1.0, testutil.ToFloat64(m.corrections))
	assert.Equal(t, 10, m.len())
}

func TestKVCorrectionFullyCachedPrompt(t *testing.T) {
	m, _ := newTestKV(t, 100)
	serve(m, 0, 0xa0)
	serve(m, 0, 1, 2, 3)
	// A prompt of exactly 3 blocks: the engine recomputes its last token,
	// so it reports at most 2 cached blocks. That is no eviction.
	tk := ticketFor(m, 1, 2, 3)
	tk.tokens = 3 * testBS
	m.sent(tk)
	u := served(3, 2)
	u.PromptTokens = 3 * testBS
	m.finish(tk, kvServed, u)
	assert.Zero(t, testutil.ToFloat64(m.corrections))
	assert.Equal(t, 4, m.len())
}

func TestKVCorrectionOtherTokenizer(t *testing.T) {
	m, _ := newTestKV(t, 100)
	blocks := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10} // 161 canonical tokens
	serve(m, 0, 0xa0)
	serve(m, 0, blocks...)
	// The engine's tokenizer makes 140 tokens of it. 128 cached (8 of its
	// blocks) is about 9 of the model's: within the margin, no correction.
	u := served(10, 8)
	u.PromptTokens = 140
	tk := ticketFor(m, blocks...)
	m.sent(tk)
	m.finish(tk, kvServed, u)
	assert.Zero(t, testutil.ToFloat64(m.corrections))
	assert.Equal(t, 11, m.len())

	// 32 cached is about 2 blocks of 10: a correction, at block 2.
	u.PromptTokensDetails.CachedTokens = 32
	tk = ticketFor(m, blocks...)
	m.sent(tk)
	m.finish(tk, kvServed, u)
	assert.Equal(t, 1.0, testutil.ToFloat64(m.corrections))
	assert.Equal(t, set(blocks...), set(m.hashes()...))
}

func TestKVCorrectionNeedsSettledBlock(t *testing.T) {
	m, _ := newTestKV(t, 100)
	serve(m, 0, 0xa0, 0xa1)
	// A is in flight when B, with the same prefix, is sent: the engine may
	// not have computed A's blocks yet when it looks for B's, so B's miss
	// says nothing about evictions.
	a := ticketFor(m, 1, 2)
	m.sent(a)
	b := ticketFor(m, 1, 2, 3)
	m.sent(b)
	assert.Equal(t, 2, b.p)
	m.finish(b, kvServed, served(3, 0))
	m.finish(a, kvServed, served(2, 0))
	assert.Zero(t, testutil.ToFloat64(m.corrections))
	assert.Equal(t, set(0xa0, 0xa1, 1, 2, 3), set(m.hashes()...))
}

func TestKVCorrectionSparesBlocksInFlight(t *testing.T) {
	m, _ := newTestKV(t, 100)
	long := ticketFor(m, 0xe0, 0xe1) // a long request, still running
	m.sent(long)
	serve(m, 0, 0xa0)
	serve(m, 0, 1, 2)
	serve(m, 1, 1, 2) // block 2 missed: 0xa0 goes, the running request's blocks stay
	assert.Equal(t, set(0xe0, 0xe1, 1, 2), set(m.hashes()...))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.corrections))
	m.finish(long, kvUnknown, nil)
	assert.Equal(t, 4, m.len())
}

func TestKVRejectedRequestRollsBack(t *testing.T) {
	m, _ := newTestKV(t, 100)
	serve(m, 0, 1, 2)
	tk := ticketFor(m, 1, 2, 3, 4)
	m.sent(tk)
	other := ticketFor(m, 4) // touched by another request since: stays
	m.sent(other)
	m.finish(tk, kvRejected, nil)
	assert.Equal(t, set(1, 2, 4), set(m.hashes()...))
	m.finish(other, kvServed, nil)
}

// drain takes what is queued for s.
func drain(s *subscriber) []stats.Message {
	var out []stats.Message
	for {
		select {
		case b := <-s.send:
			var msg stats.Message
			if err := json.Unmarshal(b, &msg); err != nil {
				panic(err)
			}
			out = append(out, msg)
		default:
			return out
		}
	}
}

func TestKVCoalescing(t *testing.T) {
	m, h := newTestKV(t, 1)
	serve(m, 0, 0xaa)
	m.flush()
	s := m.subscribe(h, func() { t.Error("subscriber dropped") }, []byte(`{"type":"stat","stat":{}}`))
	msgs := drain(s)
	require.Len(t, msgs, 2)
	assert.Equal(t, stats.TypeStat, msgs[0].Type)
	snap := msgs[1].KV
	require.NotNil(t, snap)
	assert.Equal(t, stats.KVEvent{Pod: "pod-1", BlockSize: testBS, Capacity: 1, Seq: snap.Seq, Reset: true, Added: []uint64{0xaa}}, *snap)

	// In one batch: 0xbb is added (evicting 0xaa), then 0xaa is added back
	// (evicting 0xbb). Net: nothing, and nothing is sent.
	serve(m, 0, 0xbb)
	serve(m, 0, 0xaa)
	m.flush()
	assert.Empty(t, drain(s))

	// A real change: one delta, the next seq.
	serve(m, 0, 0xdd)
	serve(m, 0, 0xee)
	m.flush()
	msgs = drain(s)
	require.Len(t, msgs, 1)
	d := msgs[0].KV
	assert.Equal(t, snap.Seq+1, d.Seq)
	assert.False(t, d.Reset)
	assert.Equal(t, []uint64{0xee}, d.Added)
	assert.Equal(t, []uint64{0xaa}, d.Removed)
	m.flush()
	assert.Empty(t, drain(s), "no change, no message")

	// Added then rolled back within a batch: nothing either. Removed (by
	// a correction) then added back: nothing.
	m, h = newTestKV(t, 10)
	serve(m, 0, 0xa0)
	serve(m, 0, 0xb0)
	serve(m, 0, 1, 2)
	s = s2(m, h, t)
	snap = drain(s)[1].KV
	tk := ticketFor(m, 0xcc)
	m.sent(tk)
	m.finish(tk, kvRejected, nil)
	serve(m, 0, 1, 2, 3) // its first block missed: 0xa0 and 0xb0 go (and 3 comes)
	serve(m, 0, 0xb0)    // 0xb0 added back
	m.flush()
	msgs = drain(s)
	require.Len(t, msgs, 1)
	assert.Equal(t, stats.KVEvent{Pod: "pod-1", BlockSize: testBS, Capacity: 10, Seq: snap.Seq + 1,
		Added: []uint64{3}, Removed: []uint64{0xa0}}, *msgs[0].KV)
	assert.Equal(t, set(0xb0, 1, 2, 3), set(m.hashes()...))
}

// s2 subscribes another stream to m and returns it.
func s2(m *kvModel, h *hub, t *testing.T) *subscriber {
	return m.subscribe(h, func() { t.Error("subscriber dropped") }, []byte(`{"type":"stat","stat":{}}`))
}

func TestKVSubscribeFlushesPendingFirst(t *testing.T) {
	m, h := newTestKV(t, 10)
	first := s2(m, h, t)
	drain(first)
	serve(m, 0, 1, 2) // pending, not flushed

	second := s2(m, h, t)
	// The existing subscriber gets the pending changes as a delta; the new
	// one a snapshot at that same seq that includes them.
	d := drain(first)
	require.Len(t, d, 1)
	msgs := drain(second)
	require.Len(t, msgs, 2)
	snap := msgs[1].KV
	assert.Equal(t, d[0].KV.Seq, snap.Seq)
	assert.Equal(t, set(1, 2), set(snap.Added...))
	assert.Equal(t, set(d[0].KV.Added...), set(snap.Added...))

	serve(m, 0, 3)
	m.flush()
	for _, s := range []*subscriber{first, second} {
		msgs := drain(s)
		require.Len(t, msgs, 1)
		assert.Equal(t, snap.Seq+1, msgs[0].KV.Seq)
		assert.Equal(t, []uint64{3}, msgs[0].KV.Added)
	}
}

func TestKVBlockSizeChangeResets(t *testing.T) {
	h := newHub(slog.New(slog.DiscardHandler))
	m := newKVModel(Config{PodName: "p"}, h, prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}), slog.New(slog.DiscardHandler))
	assert.Nil(t, m.shape.Load(), "no block size yet: nothing modelled")
	obj, err := openai.Parse([]byte(`{"prompt":"` + strings.Repeat("x", 256) + `"}`))
	require.NoError(t, err)
	assert.Nil(t, m.prepare(obj, false))

	s := s2(m, h, t)
	msgs := drain(s)
	require.Len(t, msgs, 2)
	assert.Equal(t, stats.KVEvent{Pod: "p", Seq: msgs[1].KV.Seq, Reset: true}, *msgs[1].KV)

	m.configure(16, 1000, false)
	tk := m.prepare(obj, false)
	require.NotNil(t, tk)
	assert.Len(t, tk.hashes, 4)
	m.sent(tk)
	m.finish(tk, kvServed, nil)
	m.flush()
	msgs = drain(s)
	require.Len(t, msgs, 1)
	assert.True(t, msgs[0].KV.Reset)
	assert.Equal(t, 16, msgs[0].KV.BlockSize)
	assert.Equal(t, 1000, msgs[0].KV.Capacity)
	assert.Len(t, msgs[0].KV.Added, 4)

	// A request prepared before a change is ignored after it.
	stale := m.prepare(obj, false)
	m.configure(32, 500, false)
	m.sent(stale)
	m.finish(stale, kvServed, nil)
	assert.Zero(t, m.len())
	m.flush()
	msgs = drain(s)
	require.Len(t, msgs, 1)
	assert.Equal(t, stats.KVEvent{Pod: "p", BlockSize: 32, Capacity: 500, Seq: msgs[0].KV.Seq, Reset: true}, *msgs[0].KV)

	// A failed scrape keeps what is known; an engine restart empties the model.
	serve(m, 0, 1)
	m.configure(0, 0, false)
	assert.Equal(t, 1, m.len())
	m.configure(32, 500, true)
	assert.Zero(t, m.len())
}

// streamFollower follows a stats stream's KV events and keeps the set they
// describe, checking the protocol as it goes.
type streamFollower struct {
	mu      sync.Mutex
	blocks  map[uint64]struct{}
	seq     uint64
	started bool
	adds    map[uint64]int // times each block was added (snapshots included)
	removes int            // blocks removed by deltas
	dropped int            // blocks held and missing from a later snapshot
	err     error
}

func followKV(t *testing.T, base string) *streamFollower {
	t.Helper()
	conn := subscribe(t, base)
	f := &streamFollower{adds: map[uint64]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				return
			}
			var msg stats.Message
			if err := json.Unmarshal(b, &msg); err != nil {
				f.fail(err)
				return
			}
			if msg.Type == stats.TypeKV {
				f.apply(msg.KV)
			}
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
		f.mu.Lock()
		defer f.mu.Unlock()
		assert.NoError(t, f.err)
	})
	return f
}

func (f *streamFollower) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *streamFollower) apply(ev *stats.KVEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.err != nil:
		return
	case !f.started && !ev.Reset:
		f.err = fmt.Errorf("first KV event is not a snapshot: %+v", ev)
		return
	case ev.Reset:
		keep := set(ev.Added...)
		for h := range f.blocks {
			if _, ok := keep[h]; !ok {
				f.dropped++
			}
		}
		f.blocks = map[uint64]struct{}{}
	case ev.Seq != f.seq+1:
		f.err = fmt.Errorf("seq %d after %d", ev.Seq, f.seq)
		return
	}
	f.started, f.seq = true, ev.Seq
	for _, h := range ev.Removed {
		if _, ok := f.blocks[h]; !ok {
			f.err = fmt.Errorf("seq %d removes %#x, which is not there", ev.Seq, h)
		}
		delete(f.blocks, h)
		f.removes++
	}
	for _, h := range ev.Added {
		if _, ok := f.blocks[h]; ok {
			f.err = fmt.Errorf("seq %d adds %#x, which is there", ev.Seq, h)
		}
		f.blocks[h] = struct{}{}
		f.adds[h]++
	}
}

// matches reports whether the follower is at the model's seq with exactly
// its blocks.
func (f *streamFollower) matches(m *kvModel) bool {
	seq, blocks := m.state()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started && f.seq == seq && maps.Equal(f.blocks, set(blocks...))
}

// awaitRequests waits until the proxy has accounted for n requests (its KV
// model is settled by then).
func (p *proxy) awaitRequests(t *testing.T, n uint64) {
	t.Helper()
	require.Eventually(t, func() bool { return p.Stat().Requests == n }, waitFor, tick)
}

func TestKVStream(t *testing.T) {
	// The engine reports every prompt as uncached: repeated prefixes make
	// the model correct itself, so the stream carries removals too.
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			assert.NoError(t, err)
			obj, err := openai.Parse(body)
			assert.NoError(t, err)
			text, err := prompt.AppendRequest(nil, obj, true)
			assert.NoError(t, err)
			_, _ = fmt.Fprintf(w, `{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}}`,
				prompt.TokenCount(text))
		},
	})
	p := newProxy(t, eng.URL, true, "--kv-block-size=4", "--kv-capacity-blocks=60", "--kv-flush-interval=1ms")
	early := followKV(t, p.srv.URL)

	ctx := testCtx(t)
	send := func(from, to int) {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := from + w; i < to; i += 4 {
					body := openaitest.ChatBody("", "", openaitest.User(fmt.Sprintf("shared prefix %d, the same for a third of the requests. ", i%3)+
						strings.Repeat(fmt.Sprintf("request %d. ", i), 1+i%7)))
					resp := p.post(t, ctx, "/v1/chat/completions", body)
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					assert.Equal(t, http.StatusOK, resp.StatusCode)
				}
			})
		}
		wg.Wait()
	}
	send(0, 40)
	// The early follower holds the first requests' blocks before more
	// come: deltas are batched, and a block added and removed within one
	// batch never shows.
	require.Eventually(t, func() bool { return early.matches(p.kv) }, waitFor, tick)
	mid := followKV(t, p.srv.URL) // joins after traffic, before more
	send(40, 80)
	p.awaitRequests(t, 80)
	late := followKV(t, p.srv.URL)

	for _, f := range []*streamFollower{early, mid, late} {
		require.Eventually(t, func() bool { return f.matches(p.kv) }, waitFor, tick)
	}
	assert.Positive(t, p.KVBlocks())
	assert.LessOrEqual(t, p.KVBlocks(), 60)
	early.mu.Lock()
	// Removals reach a follower as deltas, or folded into a snapshot when
	// a batch's delta is larger than the set (a loaded machine batches
	// more).
	assert.Positive(t, early.removes+early.dropped)
	early.mu.Unlock()
	assert.Positive(t, testutil.ToFloat64(p.metrics.kvCorrections))
}

func TestKVLargeSnapshotReachesSubscriber(t *testing.T) {
	eng := newEngine(t, nil)
	p := newProxy(t, eng.URL, true, "--kv-block-size=16", "--kv-capacity-blocks=31250")
	hashes := make([]uint64, 31250) // the simulator's default cache, full
	for i := range hashes {
		hashes[i] = uint64(i)*0x9e3779b97f4a7c15 + 1<<63
	}
	tk := ticketFor(p.kv, hashes...)
	p.kv.sent(tk)
	p.kv.finish(tk, kvServed, nil)

	ctx, cancel := context.WithCancel(testCtx(t))
	got := make(chan stats.KVEvent, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		stats.Subscribe(ctx, strings.TrimPrefix(p.srv.URL, "http://"), func(m stats.Message) {
			if m.KV != nil {
				select {
				case got <- *m.KV:
				default:
				}
			}
		}, slog.New(slog.DiscardHandler))
	}()
	snap := recv(t, got, "the KV snapshot")
	cancel()
	<-done
	assert.True(t, snap.Reset)
	assert.Equal(t, 31250, snap.Capacity)
	assert.Equal(t, set(hashes...), set(snap.Added...))
}

func TestKVModelOff(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, completionBody)
		},
	})
	p := newProxy(t, eng.URL, true, "--kv-model=false", "--kv-block-size=4")
	conn := subscribe(t, p.srv.URL)
	resp := p.post(t, testCtx(t), "/v1/completions", `{"prompt":"`+strings.Repeat("x", 100)+`"}`)
	_ = resp.Body.Close()
	p.awaitRequests(t, 1)
	assert.Zero(t, p.KVBlocks())
	for range 3 {
		assert.Equal(t, stats.TypeStat, nextMessage(t, conn).Type, "no KV events")
	}
}

func TestKVProxyRollsBackEngineErrors(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/completions": func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, `{"error":{"message":"too long","type":"invalid_request_error"}}`, http.StatusBadRequest)
		},
	})
	p := newProxy(t, eng.URL, false, "--kv-block-size=4")
	resp := p.post(t, testCtx(t), "/v1/completions", `{"prompt":"`+strings.Repeat("x", 100)+`"}`)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	p.awaitRequests(t, 1)
	assert.Zero(t, p.KVBlocks())
}

// BenchmarkKVRequest8kTokens is the KV model's cost per chat request of
// 8,000 tokens (a system prompt and a question): rendering, hashing,
// the send and the finish with a correction check. The body is parsed
// outside the loop, as the proxy parses it anyway.
func BenchmarkKVRequest8kTokens(b *testing.B) {
	system := strings.Repeat("You are a helpful assistant. Answer briefly and cite sources. ", 400) // 24,800 bytes
	bodies := make([]openai.Object, 64)
	for i := range bodies {
		body := `{"model":"m","max_tokens":64,"messages":[{"role":"system","content":` + mustJSON(system) +
			`},{"role":"user","content":` + mustJSON(fmt.Sprintf("%04d ", i)+strings.Repeat("What is the capital of France? ", 232)) + `}]}`
		obj, err := openai.Parse([]byte(body))
		require.NoError(b, err)
		bodies[i] = obj
	}
	raw, _ := bodies[0].Get("messages")
	msgs, err := prompt.DecodeMessages(raw)
	require.NoError(b, err)
	tokens := prompt.TokenCount(prompt.RenderChat(msgs))
	require.InDelta(b, 8000, tokens, 100)

	for _, bc := range []struct {
		name     string
		distinct int // prompts cycled through
	}{{"repeated", 1}, {"distinct-evicting", 64}} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHub(slog.New(slog.DiscardHandler))
			// Capacity of the simulator's default engine (31,250 blocks):
			// 64 distinct prompts of 500 blocks overflow it.
			m := newKVModel(Config{PodName: "p", KVBlockSize: 16, KVCapacityBlocks: 31250}, h,
				prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}), slog.New(slog.DiscardHandler))
			u := served(0, 0)
			u.PromptTokens = uint64(tokens)
			b.SetBytes(int64(len(bodies[0].Raw())))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				tk := m.prepare(bodies[i%bc.distinct], true)
				m.sent(tk)
				u.PromptTokensDetails.CachedTokens = uint64(tk.p * 16)
				m.finish(tk, kvServed, u)
				i++
				if i%64 == 0 {
					m.flush()
				}
			}
		})
	}
}

// BenchmarkKVSnapshot is the cost of the snapshot a new subscriber gets of
// a full model (the simulator's default capacity, 31,250 blocks).
func BenchmarkKVSnapshot(b *testing.B) {
	h := newHub(slog.New(slog.DiscardHandler))
	m := newKVModel(Config{PodName: "p", KVBlockSize: 16, KVCapacityBlocks: 31250}, h,
		prometheus.NewCounter(prometheus.CounterOpts{Name: "c"}), slog.New(slog.DiscardHandler))
	hashes := make([]uint64, 31250)
	for i := range hashes {
		hashes[i] = uint64(i)*0x9e3779b97f4a7c15 + 1
	}
	tk := ticketFor(m, hashes...)
	m.sent(tk)
	m.finish(tk, kvServed, nil)
	var size int
	for b.Loop() {
		m.mu.Lock()
		size = len(m.deltas.snapshot(m, m.blockSize, m.capacity))
		m.mu.Unlock()
	}
	b.ReportMetric(float64(size), "bytes/snapshot")
}

// BenchmarkProxyChat8kTokens is the whole proxy hop of an 8,000-token chat
// request to a trivial engine, with and without the KV model.
func BenchmarkProxyChat8kTokens(b *testing.B) {
	body := openaitest.ChatBody("", "", openaitest.User(strings.Repeat("You are a helpful assistant. ", 1143)))
	for _, kv := range []bool{false, true} {
		b.Run(fmt.Sprintf("kv=%v", kv), func(b *testing.B) {
			mux := http.NewServeMux()
			mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				_, _ = io.WriteString(w, completionBody)
			})
			mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {})
			eng := newBenchServer(b, mux)
			var cfg Config
			fs := flagSet(&cfg)
			require.NoError(b, fs.Parse([]string{"--engine-url=" + eng, "--pod-name=p", fmt.Sprintf("--kv-model=%v", kv),
				"--kv-block-size=16", "--kv-capacity-blocks=31250"}))
			p, err := New(cfg, nil)
			require.NoError(b, err)
			srv := listen(b, p).URL
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, srv+"/v1/chat/completions", strings.NewReader(body))
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		})
	}
}

func mustJSON(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// newBenchServer serves h until the benchmark ends and returns its URL.
func newBenchServer(b *testing.B, h http.Handler) string {
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	return srv.URL
}

// flagSet binds cfg's flags (and defaults) to a new flag set.
func flagSet(cfg *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	return fs
}

// adapterOf reads "model" as encoding/json does (escapes decoded) and
// salts by an adapter the engine lists; a listed engine's unknown model
// and a model that is not a string are not modelled.
func TestAdapterOf(t *testing.T) {
	m, _ := newTestKV(t, 100)
	for _, tc := range []struct {
		body    string
		models  *engineModels
		adapter string
		ok      bool
	}{
		{`{"prompt":"x"}`, nil, "", true},
		{`{"model":null}`, nil, "", true},
		{`{"model":7}`, nil, "", false},
		{`{"model":"base"}`, nil, "", true},
		{`{"model":"base"}`, &engineModels{listed: true, base: map[string]struct{}{"base": {}}}, "", true},
		{`{"model":"sql-lora"}`, &engineModels{listed: true, adapters: map[string]struct{}{"sql-lora": {}}}, "sql-lora", true},
		{`{"model":"sql\u002dlora"}`, &engineModels{listed: true, adapters: map[string]struct{}{"sql-lora": {}}}, "sql-lora", true},
		{`{"model":"caf\u00e9"}`, &engineModels{listed: true, adapters: map[string]struct{}{"café": {}}}, "café", true},
		{`{"model":"other"}`, &engineModels{listed: true, base: map[string]struct{}{"base": {}}}, "", false},
		{`{"model":"other"}`, &engineModels{base: map[string]struct{}{"base": {}}}, "", true},
		{"{\"model\":\"a\xffb\"}", &engineModels{listed: true, adapters: map[string]struct{}{"a\ufffdb": {}}}, "a\ufffdb", true},
	} {
		m.models.Store(tc.models)
		obj, err := openai.Parse([]byte(tc.body))
		require.NoError(t, err, tc.body)
		adapter, ok := m.adapterOf(obj)
		assert.Equal(t, tc.ok, ok, tc.body)
		assert.Equal(t, tc.adapter, adapter, tc.body)
	}
}
