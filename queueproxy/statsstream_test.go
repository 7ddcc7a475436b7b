package queueproxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// subscribe connects to a stats stream at base (an http:// URL).
func subscribe(t *testing.T, base string) *websocket.Conn {
	t.Helper()
	conn, resp, err := websocket.DefaultDialer.DialContext(testCtx(t), "ws"+strings.TrimPrefix(base, "http")+stats.Path, nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// nextStat reads one stats message, skipping KV events.
func nextStat(t *testing.T, conn *websocket.Conn) stats.Stat {
	t.Helper()
	for {
		msg := nextMessage(t, conn)
		if msg.Type == stats.TypeKV {
			continue
		}
		require.Equal(t, stats.TypeStat, msg.Type)
		require.NotNil(t, msg.Stat)
		return *msg.Stat
	}
}

// nextMessage reads one message of the stats stream.
func nextMessage(t *testing.T, conn *websocket.Conn) stats.Message {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitFor)))
	typ, b, err := conn.ReadMessage()
	require.NoError(t, err)
	require.Equal(t, websocket.TextMessage, typ)
	var msg stats.Message
	require.NoError(t, json.Unmarshal(b, &msg))
	return msg
}

// statUntil reads stats messages until one satisfies ok.
func statUntil(t *testing.T, conn *websocket.Conn, ok func(stats.Stat) bool) stats.Stat {
	t.Helper()
	for {
		if s := nextStat(t, conn); ok(s) {
			return s
		}
	}
}

func TestStatsStream(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, completionBody)
		},
	})
	// A long interval: the first message must not wait for the ticker.
	p := newProxy(t, eng.URL, true, "--stats-interval=1h")
	conn := subscribe(t, p.srv.URL)
	first := nextStat(t, conn)
	assert.Equal(t, "pod-1", first.Pod)
	assert.Equal(t, uint64(0), first.Requests)
	assert.False(t, first.Time.IsZero())

	p2 := newProxy(t, eng.URL, true) // 10ms stats interval
	conn2 := subscribe(t, p2.srv.URL)
	assert.Equal(t, uint64(0), nextStat(t, conn2).Requests)
	resp := p2.post(t, testCtx(t), "/v1/chat/completions", `{}`)
	_ = resp.Body.Close()
	s := statUntil(t, conn2, func(s stats.Stat) bool { return s.Requests == 1 })
	assert.Equal(t, uint64(7), s.PromptTokens)
	assert.Equal(t, uint64(4), s.CachedTokens)
	assert.Equal(t, uint64(3), s.CompletionTokens)
	assert.Equal(t, "pod-1", s.Pod)
	// The engine's metrics arrive on the same stream.
	s = statUntil(t, conn2, func(s stats.Stat) bool { return s.Engine.Scraped })
	assert.Equal(t, 3.0, s.Engine.Running)
}

func TestHubSlowSubscriberDoesNotBlock(t *testing.T) {
	h := newHub(slog.New(slog.DiscardHandler))
	var killed atomic.Bool
	slow := h.subscribe(func() { killed.Store(true) }, []byte("first"))
	fast := h.subscribe(func() { t.Error("fast subscriber killed") }, []byte("first"))
	assert.Equal(t, "first", string(<-fast.send))

	// slow never reads: its buffer (holding "first") fills, then it is dropped.
	for i := range subscriberBuffer + 1 {
		msg := []byte{byte('a' + i)}
		h.broadcast(msg) // must not block
		assert.Equal(t, msg, <-fast.send)
	}
	assert.True(t, killed.Load())
	n := 0
	for range slow.send { // closed after what it holds
		n++
	}
	assert.Equal(t, subscriberBuffer, n)

	h.close([]byte("final"))
	assert.Equal(t, "final", string(<-fast.send))
	_, open := <-fast.send
	assert.False(t, open)

	late := h.subscribe(func() {}, []byte("first"))
	assert.Equal(t, "final", string(<-late.send))
	_, open = <-late.send
	assert.False(t, open)
	h.done(fast)
	h.done(slow)
	h.done(late)
	h.wait()
}
