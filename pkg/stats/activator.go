package stats

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// ActivatorPath is where the autoscaler receives the activators' reports
// (WebSocket).
const ActivatorPath = "/kvasir/autoscaler/activators"

// ActivatorReport is one activator's demand per revision role: sent once a
// second, and at once when a request is buffered for a revision at zero.
type ActivatorReport struct {
	Activator string         `json:"activator"`
	Time      time.Time      `json:"time"`
	Loads     []RevisionLoad `json:"loads"`
}

// RevisionLoad is what one activator sees of a revision role.
type RevisionLoad struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Revision  string `json:"revision"`
	Role      string `json:"role,omitempty"` // "", "prefill" or "decode"
	InFlight  int    `json:"inFlight"`
	Buffered  int    `json:"buffered"`
	Ready     int    `json:"ready"`
}

// Report keeps a connection to the autoscaler at url (ws://host:port)
// and sends snapshot() every interval and whenever poke fires, re-dialling
// with back-off when the connection breaks, until ctx ends. Reports made
// while disconnected are dropped: the next one after the re-dial carries
// the current state. token gives the autoscaler's token for each dial
// (sent as "Authorization: Bearer <token>"; see TokenFile); the
// autoscaler refuses a stream without it.
func Report(ctx context.Context, url string, token func() (string, error), interval time.Duration, poke <-chan struct{},
	snapshot func() ActivatorReport, log *slog.Logger) {
	dialer := websocket.Dialer{HandshakeTimeout: 3 * time.Second}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := dial(ctx, &dialer, url, token)
		if err == nil {
			backoff = 100 * time.Millisecond
			log.Info("reporting to the autoscaler", slog.String("url", url))
			err = send(ctx, conn, interval, poke, snapshot)
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("autoscaler connection broke; re-dialling", slog.String("url", url),
			slog.Duration("backoff", backoff), slog.Any("error", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// dial opens the report stream, presenting the token.
func dial(ctx context.Context, dialer *websocket.Dialer, url string, token func() (string, error)) (*websocket.Conn, error) {
	t, err := token()
	if err != nil {
		return nil, fmt.Errorf("reading the autoscaler token: %w", err)
	}
	conn, resp, err := dialer.DialContext(ctx, url+ActivatorPath, http.Header{"Authorization": {"Bearer " + t}})
	if err != nil && resp != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: the autoscaler answered %s", err, resp.Status)
	}
	return conn, err
}

// DefaultTokenFile is where config/500-activator.yaml mounts the Secret
// holding the autoscaler's token.
const DefaultTokenFile = "/var/run/secrets/kvasir/autoscaler/token"

// TokenFile reads the autoscaler's token from path at each call, so that a
// mounted Secret's new value is used from the next dial on.
func TokenFile(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("%s: empty", path)
		}
		return t, nil
	}
}

func send(ctx context.Context, conn *websocket.Conn, interval time.Duration, poke <-chan struct{},
	snapshot func() ActivatorReport) error {
	defer conn.Close()
	// The autoscaler sends nothing; reading notices a closed connection.
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				closed <- err
				return
			}
		}
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		data, err := json.Marshal(snapshot())
		if err != nil {
			return fmt.Errorf("encoding report: %w", err)
		}
		if err := conn.SetWriteDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		if err := conn.WriteMessage(websocket.TextMessage, data); err != nil {
			return fmt.Errorf("sending report: %w", err)
		}
		select {
		case <-ctx.Done():
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
				time.Now().Add(time.Second))
			return ctx.Err()
		case err := <-closed:
			return fmt.Errorf("autoscaler closed the connection: %w", err)
		case <-t.C:
		case <-poke:
		}
	}
}
