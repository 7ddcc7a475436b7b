package queueproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// wholeStream is what a client of streamEngine receives (usage stripped).
const wholeStream = "data: " + chunkRole + "\n\n" + "data: " + chunkHel + "\n\n" +
	"data: " + chunkLo + "\n\n" + "data: " + chunkStop + "\n\n" + "data: [DONE]\n\n"

func TestDrainKeepsStreamsGoing(t *testing.T) {
	step := make(chan struct{})
	bodies := make(chan string, 2)
	eng := streamEngine(t, step, bodies)
	p := newProxy(t, eng.URL, true, "--stats-interval=1h")
	require.Equal(t, http.StatusOK, p.readyCode(t))
	sub := subscribe(t, p.srv.URL)
	assert.False(t, nextStat(t, sub).Draining)

	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m","stream":true}`)
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	assert.Equal(t, "data: "+chunkRole+"\n\n", readEvent(t, rd))

	p.Drain(testCtx(t)) // quiet period 0: returns at once
	assert.Equal(t, http.StatusServiceUnavailable, p.readyCode(t))
	s := p.Stat()
	assert.True(t, s.Draining)
	assert.False(t, s.Ready)
	assert.Equal(t, 1, s.InFlight)
	// Subscribers hear about it without waiting for the (hour-long) ticker.
	assert.True(t, nextStat(t, sub).Draining)

	close(step)
	rest, err := io.ReadAll(rd)
	require.NoError(t, err)
	assert.Equal(t, wholeStream, "data: "+chunkRole+"\n\n"+string(rest))

	// Requests are still proxied while draining (the quiet period).
	got := recv(t, p.postAsync(testCtx(t), "/v1/chat/completions", `{"model":"m","stream":true}`), "request while draining")
	require.NoError(t, got.err)
	assert.Equal(t, wholeStream, got.body)
}

// startMain runs Main's body with args until the returned cancel is called;
// done yields its result.
func startMain(t *testing.T, args ...string) (addr string, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addrs := make(chan net.Addr, 1)
	errs := make(chan error, 1)
	exited := make(chan struct{})
	logs := newTestWriter(t) // its cleanup runs after the one below
	go func() {
		defer close(exited)
		errs <- run(ctx, append([]string{"--port=0", "--pod-name=pod-1", "--stats-interval=10ms"}, args...),
			logs, func(a, _ net.Addr) { addrs <- a }, false)
	}()
	select {
	case a := <-addrs:
		t.Cleanup(func() { cancel(); <-exited })
		return a.String(), cancel, errs
	case err := <-errs:
		t.Fatalf("Main returned early: %v", err)
	}
	panic("unreachable")
}

func TestMainDrainsOnCancel(t *testing.T) {
	step := make(chan struct{})
	bodies := make(chan string, 1)
	eng := streamEngine(t, step, bodies)
	// The quiet period only needs to outlast a few local round trips.
	addr, stop, done := startMain(t, "--engine-url="+eng.URL, "--drain-quiet-period=1s", "--drain-timeout=1m")
	base := "http://" + addr
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	readyCode := func() int {
		resp, err := client.Get(base + ReadyPath)
		if err != nil {
			return 0 // not listening
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, readyCode())
	sub := subscribe(t, base)
	assert.False(t, nextStat(t, sub).Draining)

	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, base+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","stream":true}`))
	require.NoError(t, err)
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	assert.Equal(t, "data: "+chunkRole+"\n\n", readEvent(t, rd))

	stop() // SIGTERM
	require.Eventually(t, func() bool { return readyCode() == http.StatusServiceUnavailable }, waitFor, tick)
	statUntil(t, sub, func(s stats.Stat) bool { return s.Draining })
	// After the quiet period the listener closes while the stream goes on.
	require.Eventually(t, func() bool { return readyCode() == 0 }, waitFor, tick)
	select {
	case err := <-done:
		t.Fatalf("Main returned with a stream in flight: %v", err)
	default:
	}

	close(step)
	rest, err := io.ReadAll(rd)
	require.NoError(t, err)
	assert.Equal(t, wholeStream, "data: "+chunkRole+"\n\n"+string(rest))
	require.NoError(t, recv(t, done, "Main to return"))

	// The subscriber got draining reports up to a final one, then a close.
	last := statUntil(t, sub, func(s stats.Stat) bool { return s.Requests == 1 })
	assert.True(t, last.Draining)
	for {
		_, _, err := sub.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			require.True(t, errors.As(err, &ce), "want a close frame, got %v", err)
			assert.Equal(t, websocket.CloseGoingAway, ce.Code)
			break
		}
	}
}

func TestMainDrainTimeoutCutsStreams(t *testing.T) {
	cancelled := make(chan struct{})
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body)
			startStream(w)
			writeEvent(w, chunkHel)
			<-r.Context().Done()
			close(cancelled)
		},
	})
	addr, stop, done := startMain(t, "--engine-url="+eng.URL, "--drain-quiet-period=0s", "--drain-timeout=50ms")
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, "http://"+addr+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","stream":true}`))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, "data: "+chunkHel+"\n\n", readEvent(t, bufio.NewReader(resp.Body)))

	stop()
	require.NoError(t, recv(t, done, "Main to return"))
	recv(t, cancelled, "the engine to see the stream cancelled")
}

func TestMainRejectsBadFlags(t *testing.T) {
	var out strings.Builder
	err := Main(context.Background(), []string{"--engine-url=nope"}, &out)
	assert.ErrorContains(t, err, "--engine-url")
	err = Main(context.Background(), []string{"--no-such-flag"}, &out)
	assert.ErrorContains(t, err, "no-such-flag")
	err = Main(context.Background(), []string{"extra"}, &out)
	assert.ErrorContains(t, err, "unexpected arguments")
}

// The engine's preStop hook (GET /kvasir/wait-for-drain) returns only once a
// drain started and the last proxied request finished.
func TestWaitForDrain(t *testing.T) {
	step := make(chan struct{})
	bodies := make(chan string, 2)
	eng := streamEngine(t, step, bodies)
	p := newProxy(t, eng.URL, true, "--stats-interval=1h")
	require.Equal(t, http.StatusOK, p.readyCode(t))

	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m","stream":true}`)
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	assert.Equal(t, "data: "+chunkRole+"\n\n", readEvent(t, rd))

	waited := make(chan int, 1)
	go func() {
		r, err := http.Get(p.srv.URL + WaitForDrainPath)
		if err != nil {
			waited <- 0
			return
		}
		r.Body.Close()
		waited <- r.StatusCode
	}()
	p.Drain(testCtx(t)) // the quiet period (0) is over; a stream is still in flight
	select {
	case code := <-waited:
		t.Fatalf("wait-for-drain answered %d with a request in flight", code)
	default:
	}
	close(step)
	_, err := io.ReadAll(rd)
	require.NoError(t, err)
	select {
	case code := <-waited:
		assert.Equal(t, http.StatusOK, code)
	case <-testCtx(t).Done():
		t.Fatal("wait-for-drain did not answer after the last request")
	}
}
