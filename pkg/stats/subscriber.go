package stats

import (
	"context"
	"log/slog"
	"time"

	"github.com/gorilla/websocket"
)

// MaxMessageBytes bounds one message of a stats stream, as its reader
// takes it. The largest a queue-proxy sends is a snapshot of the most
// blocks it follows (4,194,304, at most 21 bytes each: 88 MB). A larger
// message breaks the connection (then re-dialled) rather than the
// subscriber's memory.
const MaxMessageBytes = 128 << 20

// Subscribe follows the stats stream of the queue-proxy at addr (host:port)
// and calls fn with every message (stats and KV events), in order, until ctx
// is done. fn is called with Reset=true on the first KV event of every
// connection. A broken
// connection is re-dialled with back-off (100 ms doubling to 5 s), so a
// subscriber started as soon as a replica is known catches its first report.
// Subscribe blocks; run it in its own goroutine.
func Subscribe(ctx context.Context, addr string, fn func(Message), log *slog.Logger) {
	url := "ws://" + addr + Path
	dialer := websocket.Dialer{HandshakeTimeout: 3 * time.Second}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, _, err := dialer.DialContext(ctx, url, nil)
		if err == nil {
			backoff = 100 * time.Millisecond
			err = follow(ctx, conn, fn, MaxMessageBytes)
		}
		if ctx.Err() != nil {
			return
		}
		log.Debug("stats stream broke; re-dialling", slog.String("addr", addr), slog.Duration("backoff", backoff), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func follow(ctx context.Context, conn *websocket.Conn, fn func(Message), limit int64) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	conn.SetReadLimit(limit)
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		m, ok, err := Decode(data)
		if err != nil {
			return err
		}
		if ok {
			fn(m)
		}
	}
}
