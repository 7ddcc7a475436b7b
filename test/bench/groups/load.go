package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// maxAnswerBytes bounds what is read of one answer.
const maxAnswerBytes = 1 << 20

// outcome is one request as the load saw it.
type outcome struct {
	Start, End time.Time
	Status     int    // 0: no HTTP answer
	Err        string // "" for a served request
}

// loader sends non-streamed OpenAI chat completions to the platform and
// keeps every request's outcome: a loss is anything but a 200 whose body
// is a chat completion with a choice.
type loader struct {
	url       string // .../v1/chat/completions
	model     string
	maxTokens int
	client    *http.Client

	mu   sync.Mutex
	recs []outcome
	seq  int
	wg   sync.WaitGroup
}

func newLoader(base, model string, maxTokens int) *loader {
	return &loader{url: base + "/v1/chat/completions", model: model, maxTokens: maxTokens,
		client: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}
}

// one sends one request and records its outcome; ctx ending does not cut
// a request short (it is counted whole).
func (l *loader) one() {
	l.mu.Lock()
	l.seq++
	n := l.seq
	l.mu.Unlock()
	body, _ := json.Marshal(map[string]any{"model": l.model, "max_tokens": l.maxTokens,
		"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("serving group request %d", n)}}})
	rec := outcome{Start: time.Now()}
	rec.Status, rec.Err = l.send(body)
	rec.End = time.Now()
	l.mu.Lock()
	l.recs = append(l.recs, rec)
	l.mu.Unlock()
}

func (l *loader) send(body []byte) (int, string) {
	resp, err := l.client.Post(l.url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return resp.StatusCode, "reading the answer: " + err.Error()
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(data[:min(len(data), 200)])))
	}
	var chat struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(data, &chat); err != nil || len(chat.Choices) == 0 {
		return resp.StatusCode, fmt.Sprintf("200 without a chat completion: %.200s", data)
	}
	return resp.StatusCode, ""
}

// openLoop sends rate requests per second, evenly spaced, until ctx ends.
func (l *loader) openLoop(ctx context.Context, rate float64) {
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.wg.Add(1)
			go func() { defer l.wg.Done(); l.one() }()
		}
	}
}

// closedLoop keeps n requests in flight until ctx ends.
func (l *loader) closedLoop(ctx context.Context, n int) {
	for range n {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				l.one()
			}
		}()
	}
}

// wait returns when every request sent has ended.
func (l *loader) wait() { l.wg.Wait() }

// tally counts the outcomes: served, lost, and the distinct losses (with
// their counts), most frequent first.
func (l *loader) tally() (served, lost int, why []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	count := map[string]int{}
	for _, r := range l.recs {
		if r.Err == "" {
			served++
			continue
		}
		lost++
		count[r.Err]++
	}
	for e := range count {
		why = append(why, e)
	}
	sort.Slice(why, func(i, j int) bool {
		return count[why[i]] > count[why[j]] || (count[why[i]] == count[why[j]] && why[i] < why[j])
	})
	for i, e := range why {
		why[i] = fmt.Sprintf("%dx %s", count[e], e)
	}
	return served, lost, why
}

// lostBetween counts the losses of requests that ended in [from, to).
func (l *loader) lostBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Err != "" && !r.End.Before(from) && r.End.Before(to) {
			n++
		}
	}
	return n
}

// latency returns the median, 99th percentile and longest time of the
// served requests (zero when none was).
func (l *loader) latency() (p50, p99, longest time.Duration) {
	l.mu.Lock()
	var ds []time.Duration
	for _, r := range l.recs {
		if r.Err == "" {
			ds = append(ds, r.End.Sub(r.Start))
		}
	}
	l.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[(len(ds)*99)/100], ds[len(ds)-1]
}
