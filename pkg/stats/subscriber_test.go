package stats

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

// TestSubscribeFollowsAndRedials serves two connections that each send two
// stats and hang up; the subscriber sees all four in order.
func TestSubscribeFollowsAndRedials(t *testing.T) {
	var conns atomic.Int32
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, Path, r.URL.Path)
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		n := conns.Add(1)
		for i := int32(0); i < 2 && n <= 2; i++ {
			msg, _ := json.Marshal(Message{Type: TypeStat, Stat: &Stat{Pod: "p", Requests: uint64((n-1)*2 + i)}})
			_ = c.WriteMessage(websocket.TextMessage, msg)
		}
		_ = c.WriteMessage(websocket.TextMessage, []byte(`{"type":"future-kind"}`)) // ignored
		if n > 2 {
			_, _, _ = c.ReadMessage() // hold the third connection until the client leaves
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan uint64, 10)
	done := make(chan struct{})
	go func() {
		Subscribe(ctx, strings.TrimPrefix(srv.URL, "http://"), func(m Message) { got <- m.Stat.Requests }, slog.New(slog.DiscardHandler))
		close(done)
	}()
	for want := uint64(0); want < 4; want++ {
		select {
		case v := <-got:
			require.Equal(t, want, v)
		case <-time.After(10 * time.Second):
			t.Fatalf("stat %d did not arrive", want)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return after cancel")
	}
}

// TestFollowRefusesAMessageOverTheLimit: a peer that sends one message
// larger than the limit breaks the connection; what came before it was
// delivered, nothing of it is.
func TestFollowRefusesAMessageOverTheLimit(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		small, _ := json.Marshal(Message{Type: TypeStat, Stat: &Stat{Pod: "p", Requests: 1}})
		_ = c.WriteMessage(websocket.TextMessage, small)
		big, _ := json.Marshal(Message{Type: TypeStat, Stat: &Stat{Pod: strings.Repeat("p", 4096)}})
		_ = c.WriteMessage(websocket.TextMessage, big)
		_, _, _ = c.ReadMessage() // until the client leaves
	}))
	defer srv.Close()
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+Path, nil)
	require.NoError(t, err)
	var got []uint64
	err = follow(context.Background(), conn, func(m Message) { got = append(got, m.Stat.Requests) }, 1024)
	require.ErrorIs(t, err, websocket.ErrReadLimit)
	require.Equal(t, []uint64{1}, got)
}
