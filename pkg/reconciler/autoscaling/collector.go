package autoscaling

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// reportTTL is how long an activator's last report counts after it stops
// reporting (it went away, or its connection broke).
const reportTTL = 5 * time.Second

// demand is what the activators see of one revision role, summed.
type demand struct {
	InFlight, Buffered int
}

// collector receives the activators' reports over WebSocket.
type collector struct {
	log      *slog.Logger
	now      func() time.Time
	onDemand func() // a report asks for a revision at zero: decide now
	token    []byte // what reporters must present (Authorization: Bearer)
	upgrader websocket.Upgrader

	mu      sync.Mutex
	reports map[string]received // by activator
}

type received struct {
	at    time.Time
	loads map[fleet.Key]stats.RevisionLoad
}

func newCollector(log *slog.Logger, now func() time.Time, onDemand func(), token []byte) *collector {
	return &collector{log: log, now: now, onDemand: onDemand, token: token, reports: map[string]received{},
		upgrader: websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 1024}}
}

// ServeHTTP accepts one activator's report stream, if it presents the
// token: anyone else is answered 401 before the upgrade, and nothing it
// would send is read.
func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !authorized(r, c.token) {
		c.log.Warn("refused an unauthenticated activator report stream", slog.String("remote", r.RemoteAddr))
		w.Header().Set("WWW-Authenticate", `Bearer realm="kvasir-autoscaler"`)
		http.Error(w, "a report needs the autoscaler token (Authorization: Bearer)", http.StatusUnauthorized)
		return
	}
	conn, err := c.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	defer conn.Close()
	conn.SetReadLimit(16 << 20)
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) {
				c.log.Debug("activator report stream ended", slog.String("remote", r.RemoteAddr), slog.Any("error", err))
			}
			return
		}
		var rep stats.ActivatorReport
		if err := json.Unmarshal(data, &rep); err != nil || rep.Activator == "" {
			c.log.Warn("bad activator report; closing the stream", slog.String("remote", r.RemoteAddr), slog.Any("error", err))
			_ = conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseUnsupportedData, "bad report"), time.Now().Add(time.Second))
			return
		}
		if c.record(rep) && c.onDemand != nil {
			c.onDemand()
		}
	}
}

// record stores a report and tells whether it asks for a revision role
// that has no ready replica.
func (c *collector) record(rep stats.ActivatorReport) (atZero bool) {
	loads := make(map[fleet.Key]stats.RevisionLoad, len(rep.Loads))
	for _, l := range rep.Loads {
		loads[fleet.Key{Namespace: l.Namespace, Service: l.Service, Revision: l.Revision, Role: l.Role}] = l
		if l.Buffered > 0 && l.Ready == 0 {
			atZero = true
		}
	}
	c.mu.Lock()
	c.reports[rep.Activator] = received{at: c.now(), loads: loads}
	c.mu.Unlock()
	return atZero
}

// demand sums the fresh reports for every revision role, dropping the
// stale ones.
func (c *collector) demand() map[fleet.Key]demand {
	now := c.now()
	out := map[fleet.Key]demand{}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, r := range c.reports {
		if now.Sub(r.at) > reportTTL {
			delete(c.reports, name)
			continue
		}
		for k, l := range r.loads {
			d := out[k]
			d.InFlight += l.InFlight
			d.Buffered += l.Buffered
			out[k] = d
		}
	}
	return out
}
