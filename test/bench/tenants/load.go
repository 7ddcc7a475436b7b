package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/ratelimit"
)

// record is one request of a phase, its times from the phase's origin.
type record struct {
	// proc is the kvasir local process whose API it was sent to (an index
	// of the loader's bases).
	proc int
	sent time.Duration
	// answered is when the status line came (0 and status 0: never).
	answered time.Duration
	status   int
	// tokens is the usage's prompt plus completion tokens of a 2xx answer
	// (usage: the answer reported it).
	tokens int64
	usage  bool
	// metered: the answer carried x-ratelimit-remaining-tokens, which the
	// activator writes only when the limiter decided (not when its store
	// was unavailable).
	metered bool
	err     string
}

// loader sends the tenant's requests: streamed chat completions of one
// prompt and max_tokens, with the tenant's key, round robin over the APIs
// of the kvasir local processes.
type loader struct {
	hc      *http.Client
	urls    []string
	next    atomic.Uint64 // the count of requests sent, for the round robin
	key     string
	body    []byte
	timeout time.Duration
}

// newLoader returns a loader over bases, the processes' API base URLs (at
// least one).
func newLoader(bases []string, model, key string, promptBytes, maxTokens int, timeout time.Duration) *loader {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	body, _ := json.Marshal(map[string]any{
		"model":          model,
		"messages":       []map[string]string{{"role": "user", "content": promptText(promptBytes)}},
		"max_tokens":     maxTokens,
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
	})
	urls := make([]string, len(bases))
	for i, b := range bases {
		urls[i] = b + "/v1/chat/completions"
	}
	return &loader{hc: &http.Client{Transport: tr}, urls: urls, key: key, body: body, timeout: timeout}
}

func (l *loader) close() { l.hc.CloseIdleConnections() }

// promptText is n bytes of words.
func promptText(n int) string {
	var sb strings.Builder
	words := []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}
	for i := 0; sb.Len() < n; i++ {
		sb.WriteString(words[i%len(words)])
		sb.WriteByte(' ')
	}
	return sb.String()[:n]
}

// do sends one request and measures it against origin.
func (l *loader) do(ctx context.Context, origin time.Time) record {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	var r record
	r.proc = int((l.next.Add(1) - 1) % uint64(len(l.urls)))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.urls[r.proc], bytes.NewReader(l.body))
	if err != nil {
		r.err = err.Error()
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.key)
	r.sent = time.Since(origin)
	resp, err := l.hc.Do(req)
	if err != nil {
		r.err = err.Error()
		return r
	}
	defer resp.Body.Close()
	r.answered, r.status = time.Since(origin), resp.StatusCode
	r.metered = resp.Header.Get(ratelimit.HeaderRemainingTokens) != ""
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return r
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: "))
		if !ok || !bytes.Contains(data, []byte(`"usage"`)) {
			continue
		}
		var chunk struct {
			Usage *struct {
				PromptTokens     int64 `json:"prompt_tokens"`
				CompletionTokens int64 `json:"completion_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal(data, &chunk) == nil && chunk.Usage != nil {
			r.tokens, r.usage = chunk.Usage.PromptTokens+chunk.Usage.CompletionTokens, true
		}
	}
	if err := sc.Err(); err != nil {
		r.err = err.Error()
	}
	return r
}

// drain sends requests closed loop, concurrency at a time, until one is
// refused with 429 (the tenant's bucket is empty) or timeout passes, then
// waits for those in flight. It returns every request's record.
func (l *loader) drain(parent context.Context, concurrency int, timeout time.Duration) ([]record, error) {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	origin := time.Now()
	var (
		mu     sync.Mutex
		recs   []record
		denied atomic.Bool
		wg     sync.WaitGroup
	)
	for range concurrency {
		wg.Go(func() {
			for !denied.Load() && ctx.Err() == nil {
				r := l.do(ctx, origin)
				mu.Lock()
				recs = append(recs, r)
				mu.Unlock()
				if r.status == http.StatusTooManyRequests {
					denied.Store(true)
				}
			}
		})
	}
	wg.Wait()
	if !denied.Load() {
		if err := parent.Err(); err != nil {
			return recs, err
		}
		return recs, fmt.Errorf("%w within %s at %d in flight (%d requests): is the tenant's limit enforced?",
			errNoDenial, timeout, concurrency, len(recs))
	}
	return recs, nil
}

// openLoop sends requests at rate per second (constant arrivals; a late
// arrival is sent at once, so the schedule never drifts) for duration and
// waits for every request. When at is set, it is called once atAfter into
// the loop; atTime is then when it was called. Times are from the loop's
// start.
func (l *loader) openLoop(ctx context.Context, rate float64, duration, atAfter time.Duration, at func()) (recs []record, atTime time.Duration) {
	origin := time.Now()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	sleepUntil := func(d time.Duration) {
		if wait := time.Until(origin.Add(d)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
	}
	fire := func() {
		sleepUntil(atAfter)
		if ctx.Err() == nil {
			atTime = time.Since(origin)
			at()
		}
		at = nil
	}
	for i := 0; ctx.Err() == nil; i++ {
		due := time.Duration(float64(i) / rate * float64(time.Second))
		if due >= duration {
			break
		}
		if at != nil && due >= atAfter {
			fire()
		}
		sleepUntil(due)
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			r := l.do(ctx, origin)
			mu.Lock()
			recs = append(recs, r)
			mu.Unlock()
		})
	}
	if at != nil {
		fire()
	}
	wg.Wait()
	return recs, atTime
}
