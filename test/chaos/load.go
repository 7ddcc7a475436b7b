package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// outcome is how a request ended, as its client saw it.
type outcome int

const (
	// outcomeOK: a whole answer (every token asked for; a stream to its
	// [DONE]).
	outcomeOK outcome = iota
	// outcomeFailed: an error status, a broken connection, a truncated
	// answer, or a stream that ended without [DONE] or an error event.
	outcomeFailed
	// outcomeErrorEvent: a stream that ended with an SSE error event.
	outcomeErrorEvent
	// outcomeHang: no end within the client deadline.
	outcomeHang
)

// record is one request as the load generator saw it.
type record struct {
	seq    int
	stream bool
	// target is the endpoint (index in the load's URLs) that took the
	// request; rerouted counts the endpoints that refused its connection
	// before (a refused connection is an endpoint already removed from the
	// Service: the request goes to the next one).
	target   int
	rerouted int
	// start is when the request was sent to target, end when its answer
	// ended (or failed).
	start, end time.Time
	outcome    outcome
	reason     string // what went wrong, for anything but outcomeOK
}

// inFlightAt reports whether the request was under way at some moment of
// [from, to].
func (r *record) inFlightAt(from, to time.Time) bool {
	return r.start.Before(to) && r.end.After(from)
}

// loadConfig shapes the load.
type loadConfig struct {
	// Concurrency is the number of clients, each sending its next request
	// when its last one ended.
	Concurrency int
	// StreamFraction of the requests are streamed (SSE).
	StreamFraction float64
	// MaxTokens each request asks for (and must get).
	MaxTokens int
	// Deadline is how long a client waits for a request to end before
	// counting it as a hang.
	Deadline time.Duration
	// NewConns sends each request on a new connection, so that an endpoint
	// that stopped listening refuses it (a Service in front of processes
	// that may go away). Otherwise connections are kept alive.
	NewConns bool
	// Probe, when set, is the period at which each endpoint's /healthz is
	// read, as a Service follows readiness: an endpoint that answers 503 is
	// out of the rotation until it answers 200 again. One that cannot be
	// reached stays in (its refused connections re-route requests).
	Probe time.Duration
}

// load is a closed-loop load generator spreading requests round-robin over
// its endpoints. Create it with newLoad; stop it with stop.
type load struct {
	cfg    loadConfig
	urls   []string
	client *http.Client

	next     atomic.Uint64 // round-robin position
	seq      atomic.Int64
	done     atomic.Int64 // requests ended
	eps      []endpointState
	stopping chan struct{}
	wg       sync.WaitGroup
	probes   sync.WaitGroup

	mu      sync.Mutex
	records []*record
}

// endpointState is what is in flight at one endpoint now, and its readiness
// as the probe last saw it.
type endpointState struct {
	streamed, plain atomic.Int64
	unready         atomic.Bool // answered 503 to the last probe
	sawUnready      atomic.Bool // answered 503 at least once
}

// newLoad starts cfg.Concurrency clients sending to urls (base URLs of the
// OpenAI API) until stop or ctx ends.
func newLoad(ctx context.Context, cfg loadConfig, urls []string) *load {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: cfg.Concurrency,
		DisableKeepAlives:   cfg.NewConns,
		DisableCompression:  true,
	}
	l := &load{cfg: cfg, urls: urls, client: &http.Client{Transport: tr},
		eps: make([]endpointState, len(urls)), stopping: make(chan struct{})}
	if cfg.Probe > 0 {
		for i := range urls {
			l.probes.Add(1)
			go func() { defer l.probes.Done(); l.probe(ctx, i) }()
		}
	}
	for range cfg.Concurrency {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stopping:
					return
				case <-ctx.Done():
					return
				default:
				}
				rec := l.one(ctx)
				l.mu.Lock()
				l.records = append(l.records, rec)
				l.mu.Unlock()
				l.done.Add(1)
			}
		}()
	}
	return l
}

// probe reads endpoint i's readiness every cfg.Probe until the load stops.
func (l *load) probe(ctx context.Context, i int) {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(l.cfg.Probe)
	defer tick.Stop()
	for {
		if resp, err := client.Get(l.urls[i] + "/healthz"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			unready := resp.StatusCode == http.StatusServiceUnavailable
			l.eps[i].unready.Store(unready)
			if unready {
				l.eps[i].sawUnready.Store(true)
			}
		}
		select {
		case <-l.stopping:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sawUnready reports whether endpoint i ever failed its readiness probe.
func (l *load) sawUnready(i int) bool { return l.eps[i].sawUnready.Load() }

// order returns the endpoints a request tries, in turn: round-robin from
// the next position, ready ones first.
func (l *load) order() []int {
	n := len(l.urls)
	first := int(l.next.Add(1)-1) % n
	ready, unready := make([]int, 0, n), make([]int, 0, n)
	for k := range n {
		i := (first + k) % n
		if l.eps[i].unready.Load() {
			unready = append(unready, i)
		} else {
			ready = append(ready, i)
		}
	}
	return append(ready, unready...)
}

// ended returns how many requests have ended so far.
func (l *load) ended() int { return int(l.done.Load()) }

// endedSince returns how many requests sent at or after t have ended.
func (l *load) endedSince(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.records {
		if !r.start.Before(t) {
			n++
		}
	}
	return n
}

// inFlight returns the streamed and non-streamed requests in flight at
// endpoint i now.
func (l *load) inFlight(i int) (streamed, plain int) {
	return int(l.eps[i].streamed.Load()), int(l.eps[i].plain.Load())
}

// stop lets the clients finish their requests, sends no more, and returns
// every request's record. Requests end by themselves (each has the client
// deadline), so stop fails only when the clients do not, after a margin.
func (l *load) stop() ([]*record, error) {
	select {
	case <-l.stopping:
	default:
		close(l.stopping)
	}
	finished := make(chan struct{})
	go func() { l.wg.Wait(); l.probes.Wait(); close(finished) }()
	timer := time.NewTimer(l.cfg.Deadline + 30*time.Second)
	defer timer.Stop()
	select {
	case <-finished:
	case <-timer.C:
		return nil, fmt.Errorf("the load's clients did not end within their deadline (%s) and a margin", l.cfg.Deadline)
	}
	l.client.CloseIdleConnections()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.records, nil
}

func (l *load) track(i int, stream bool, d int64) {
	if stream {
		l.eps[i].streamed.Add(d)
	} else {
		l.eps[i].plain.Add(d)
	}
}

// one sends one request and judges its answer.
func (l *load) one(ctx context.Context) *record {
	seq := int(l.seq.Add(1))
	// Streamed requests spread evenly: seq is streamed when it takes the
	// running share of streams to the next whole number.
	f := l.cfg.StreamFraction
	stream := int(float64(seq)*f) != int(float64(seq-1)*f)
	rec := &record{seq: seq, stream: stream}
	body := requestBody(seq, stream, l.cfg.MaxTokens)
	rctx, cancel := context.WithTimeout(ctx, l.cfg.Deadline)
	defer cancel()
	for _, i := range l.order() {
		rec.target, rec.start = i, time.Now()
		l.track(i, stream, 1)
		req, err := http.NewRequestWithContext(rctx, http.MethodPost, l.urls[i]+"/v1/chat/completions", bytes.NewReader(body))
		if err != nil {
			panic(err) // a URL of ours: cannot fail
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := l.client.Do(req)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			l.track(i, stream, -1)
			rec.rerouted++
			continue
		}
		rec.outcome, rec.reason = judge(rctx, resp, err, stream, l.cfg.MaxTokens)
		rec.end = time.Now()
		l.track(i, stream, -1)
		return rec
	}
	rec.end = time.Now()
	rec.outcome, rec.reason = outcomeFailed, "every endpoint refused the connection"
	return rec
}

// requestBody is a chat completion asking for maxTokens tokens.
func requestBody(seq int, stream bool, maxTokens int) []byte {
	b := `{"model":"` + modelName + `","max_tokens":` + strconv.Itoa(maxTokens) +
		`,"messages":[{"role":"user","content":"chaos request ` + strconv.Itoa(seq) + `"}]`
	if stream {
		b += `,"stream":true,"stream_options":{"include_usage":true}`
	}
	return []byte(b + "}")
}

// judge reads an answer to its end and says how it ended.
func judge(ctx context.Context, resp *http.Response, err error, stream bool, maxTokens int) (outcome, string) {
	if err != nil {
		return transportFailure(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return outcomeFailed, fmt.Sprintf("HTTP %d %s", resp.StatusCode, errorCode(b))
	}
	if stream {
		return judgeStream(ctx, resp.Body, maxTokens)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return transportFailure(ctx, err)
	}
	var c struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return outcomeFailed, "200 with a body that is not a completion"
	}
	if len(c.Choices) != 1 || c.Choices[0].Message.Content == "" || c.Usage.CompletionTokens != maxTokens {
		return outcomeFailed, fmt.Sprintf("200 with an incomplete completion (%d tokens)", c.Usage.CompletionTokens)
	}
	return outcomeOK, ""
}

// judgeStream reads an SSE stream to its end: [DONE] with every token is a
// success, an error event is a stream broken cleanly, anything else a
// failure (or a hang, past the deadline).
func judgeStream(ctx context.Context, body io.Reader, maxTokens int) (outcome, string) {
	rd := bufio.NewReader(body)
	done, tokens, errEvent := false, -1, ""
	for {
		line, err := rd.ReadString('\n')
		if data, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data:"); ok && err == nil {
			data = strings.TrimSpace(data)
			if data == "[DONE]" {
				done = true
				continue
			}
			var ev struct {
				Error *struct {
					Code string `json:"code"`
				} `json:"error"`
				Usage *struct {
					CompletionTokens int `json:"completion_tokens"`
				} `json:"usage"`
			}
			if json.Unmarshal([]byte(data), &ev) != nil {
				return outcomeFailed, "stream with an event that is not JSON"
			}
			if ev.Error != nil && errEvent == "" {
				errEvent = "error event " + ev.Error.Code
			}
			if ev.Usage != nil {
				tokens = ev.Usage.CompletionTokens
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			o, why := transportFailure(ctx, err)
			if o == outcomeHang {
				if errEvent != "" {
					why += " after an " + errEvent
				}
				return o, why
			}
			if errEvent != "" { // the event arrived; the connection closing after it is the end
				return outcomeErrorEvent, errEvent
			}
			return o, "stream torn without an error event: " + why
		}
	}
	switch {
	case errEvent != "":
		return outcomeErrorEvent, errEvent
	case !done:
		return outcomeFailed, "stream ended without [DONE] or an error event"
	case tokens != maxTokens:
		return outcomeFailed, fmt.Sprintf("stream ended with %d of %d tokens", tokens, maxTokens)
	}
	return outcomeOK, ""
}

// transportFailure names a failure to send or read: a hang when the client
// deadline passed, else a failure with a short cause.
func transportFailure(ctx context.Context, err error) (outcome, string) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return outcomeHang, "no end within the client deadline"
	}
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return outcomeFailed, "connection reset"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return outcomeFailed, "connection closed early"
	}
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return outcomeFailed, err.Error()
}

// errorCode returns the code of an OpenAI error body, or a placeholder.
func errorCode(body []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
		return "(no OpenAI error)"
	}
	return e.Error.Code
}
