package queueproxy

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

const (
	// subscriberBuffer is how many messages a subscriber may lag behind
	// before it is disconnected: with KV deltas up to every 20 ms, about a
	// second (a large snapshot takes a while to write to a remote peer).
	subscriberBuffer = 64
	// subscriberWriteTimeout bounds writing one message to a subscriber.
	subscriberWriteTimeout = 2 * time.Second
	// subscriberReadLimit bounds what a subscriber may send (it is ignored).
	subscriberReadLimit = 4096
)

// hub fans stats messages out to WebSocket subscribers. Broadcasting never
// blocks: each subscriber has a bounded buffer and is dropped when it is full.
type hub struct {
	log *slog.Logger

	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	closed bool
	last   []byte // the final message, for subscribers arriving after close

	writers sync.WaitGroup
}

// subscriber is one stats stream. send is closed when the hub is done with it.
type subscriber struct {
	send    chan []byte
	kill    func() // unblocks a writer stuck on a dead connection
	tracked bool   // counted in hub.writers
}

func newHub(log *slog.Logger) *hub {
	return &hub{log: log, subs: make(map[*subscriber]struct{})}
}

// subscribe registers a subscriber whose first messages are first (at most
// subscriberBuffer). After the hub closed, the subscriber gets the final
// message and send closed.
func (h *hub) subscribe(kill func(), first ...[]byte) *subscriber {
	s := &subscriber{send: make(chan []byte, subscriberBuffer), kill: kill}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.send <- h.last
		close(s.send)
		return s
	}
	// Added under mu before close sets closed, so before wait is called.
	h.writers.Add(1)
	s.tracked = true
	for _, m := range first {
		s.send <- m
	}
	h.subs[s] = struct{}{}
	return s
}

// broadcast queues msg for every subscriber, dropping those that lag.
func (h *hub) broadcast(msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.broadcastLocked(msg)
}

func (h *hub) broadcastLocked(msg []byte) {
	for s := range h.subs {
		select {
		case s.send <- msg:
		default:
			h.log.Warn("dropping slow stats subscriber", slog.Int("buffered", len(s.send)))
			h.removeLocked(s)
			s.kill()
		}
	}
}

// remove forgets s and closes its send channel; it is idempotent.
func (h *hub) remove(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removeLocked(s)
}

func (h *hub) removeLocked(s *subscriber) {
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.send)
	}
}

// close sends final to every subscriber and ends their streams.
func (h *hub) close(final []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.broadcastLocked(final)
	for s := range h.subs {
		h.removeLocked(s)
	}
	h.closed, h.last = true, final
}

// done marks the writer of s finished.
func (h *hub) done(s *subscriber) {
	if s.tracked {
		h.writers.Done()
	}
}

// wait blocks until every subscriber's writer has finished.
func (h *hub) wait() { h.writers.Wait() }

// statMessage renders a stats message.
func statMessage(s stats.Stat) []byte {
	b, err := json.Marshal(stats.Message{Type: stats.TypeStat, Stat: &s})
	if err != nil { // only plain fields: cannot happen
		panic("queueproxy: marshal stat: " + err.Error())
	}
	return b
}

// serveStats upgrades to a WebSocket and streams stats messages until the
// subscriber goes away or the proxy stops.
func (p *Proxy) serveStats(w http.ResponseWriter, r *http.Request) {
	conn, err := p.upgrader.Upgrade(w, r, nil)
	if err != nil {
		p.log.Debug("stats upgrade failed", slog.Any("error", err)) // Upgrade answered the client
		return
	}
	log := p.log.With(slog.String("subscriber", r.RemoteAddr))
	log.Debug("stats subscriber connected")
	kill := func() { _ = conn.Close() }
	var s *subscriber
	if p.kvs != nil {
		// The KV snapshot and the registration are atomic with respect to
		// KV deltas (see kvSource.subscribe).
		s = p.kvs.subscribe(p.hub, kill, statMessage(p.Stat()))
	} else {
		s = p.hub.subscribe(kill, statMessage(p.Stat()))
	}
	defer p.hub.done(s)
	defer conn.Close()

	// Read (and discard) so that control frames are handled and a closed
	// connection is noticed.
	conn.SetReadLimit(subscriberReadLimit)
	go func() {
		for {
			if _, _, err := conn.NextReader(); err != nil {
				p.hub.remove(s)
				return
			}
		}
	}()

	for msg := range s.send {
		_ = conn.SetWriteDeadline(time.Now().Add(subscriberWriteTimeout))
		if err := conn.WriteMessage(websocket.TextMessage, msg); err != nil {
			log.Debug("stats subscriber gone", slog.Any("error", err))
			p.hub.remove(s)
			return
		}
	}
	// The stream ended (hub closed, or the subscriber was dropped or left):
	// say goodbye in case the peer is still there.
	closeMsg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "queue-proxy stopping")
	_ = conn.WriteControl(websocket.CloseMessage, closeMsg, time.Now().Add(subscriberWriteTimeout))
}
