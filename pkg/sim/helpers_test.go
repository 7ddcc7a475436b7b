package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
)

// testServer is a Server with a running engine behind an httptest server.
type testServer struct {
	*Server
	URL string
}

func startServer(t *testing.T, mutate func(*Config), opts ...Option) *testServer {
	t.Helper()
	return startServerOn(t, nil, mutate, opts...)
}

// startServerOn is startServer with the HTTP server's listener wrapped by
// wrap (nil: as it is).
func startServerOn(t *testing.T, wrap func(net.Listener) net.Listener, mutate func(*Config), opts ...Option) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.TimeScale = 100
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg, append([]Option{WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)...)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	engineDone := make(chan struct{})
	go func() {
		defer close(engineDone)
		_ = s.Run(ctx)
	}()
	hs := httptest.NewUnstartedServer(s.Handler())
	if wrap != nil {
		hs.Listener = wrap(hs.Listener)
	}
	hs.Start()
	t.Cleanup(func() {
		cancel() // the engine fails what is left, so handlers return
		<-engineDone
		hs.Close()
	})
	if cfg.StartupDelay == 0 {
		require.Eventually(t, s.Ready, 5*time.Second, time.Millisecond)
	}
	return &testServer{Server: s, URL: hs.URL}
}

func (ts *testServer) post(t *testing.T, path, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(ts.URL+path, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// completion is the part of a response (or chunk) the tests look at.
type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens        int `json:"prompt_tokens"`
		CompletionTokens    int `json:"completion_tokens"`
		TotalTokens         int `json:"total_tokens"`
		PromptTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(b, &v), "body: %s", b)
	return v
}

// streamEvent is one SSE event of a stream, with its arrival time.
type streamEvent struct {
	data []byte
	at   time.Time
}

// stream posts a streaming request and collects its events until the body
// ends. It returns the events, the time the request was sent and the error
// that ended the body (nil after a clean end).
func (ts *testServer) stream(t *testing.T, ctx context.Context, path, body string) ([]streamEvent, time.Time, error) {
	t.Helper()
	events, start, err := ts.tryStream(ctx, path, body)
	var se *streamSetupError
	if errors.As(err, &se) {
		t.Fatal(err)
	}
	return events, start, err
}

// streamSetupError reports a stream that did not start.
type streamSetupError struct{ msg string }

func (e *streamSetupError) Error() string { return e.msg }

// tryStream is stream without the test's assertions, for goroutines.
func (ts *testServer) tryStream(ctx context.Context, path, body string) ([]streamEvent, time.Time, error) {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+path, strings.NewReader(body))
	if err != nil {
		return nil, start, &streamSetupError{err.Error()}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, start, &streamSetupError{err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		return nil, start, &streamSetupError{fmt.Sprintf("status %d, content type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)}
	}
	var events []streamEvent
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return events, start, err
		}
		if d, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			events = append(events, streamEvent{data: bytes.TrimSpace(d), at: time.Now()})
		}
	}
}

// family returns the metric family name of the server's registry. It only
// reports errors (no FailNow): it also runs in require.Eventually conditions.
func (ts *testServer) family(t *testing.T, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := ts.m.reg.Gather()
	if err != nil {
		t.Errorf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	t.Errorf("metric %s not found", name)
	return &dto.MetricFamily{}
}

// value returns the value of a gauge or counter (the first series, or the
// one with the given label value).
func (ts *testServer) value(t *testing.T, name string, label ...string) float64 {
	t.Helper()
	for _, m := range ts.family(t, name).GetMetric() {
		if len(label) == 2 && !hasLabel(m, label[0], label[1]) {
			continue
		}
		if m.Gauge != nil {
			return m.Gauge.GetValue()
		}
		return m.Counter.GetValue()
	}
	t.Errorf("metric %s%v not found", name, label)
	return -1
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// histogram returns a histogram's sample sum and count.
func (ts *testServer) histogram(t *testing.T, name string) (float64, uint64) {
	t.Helper()
	for _, m := range ts.family(t, name).GetMetric() {
		return m.GetHistogram().GetSampleSum(), m.GetHistogram().GetSampleCount()
	}
	return 0, 0
}

// chatBody is a chat request to the simulator's model: a system and a user
// message, then extra members (raw JSON, none when empty).
func chatBody(system, user string, extra string) string {
	return openaitest.ChatBody("sim-model", extra, openaitest.System(system), openaitest.User(user))
}
