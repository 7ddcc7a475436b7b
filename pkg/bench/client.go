package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// outcome of one request.
type outcome uint8

const (
	outcomeOK        outcome = iota
	outcomeError             // non-2xx, transport error, SSE error event, truncated stream
	outcomeCancelled         // the run itself was cancelled
)

// sample is the measurement of one request.
type sample struct {
	outcome  outcome
	errMsg   string
	ttft     time.Duration // 0 when not streamed or no content arrived
	e2e      time.Duration
	itl      []time.Duration // gaps between successive content chunks
	chunks   int             // content chunks received
	usage    bool            // the server reported usage
	prompt   int             // usage.prompt_tokens, or the request's estimate
	cached   int             // usage.prompt_tokens_details.cached_tokens
	output   int             // usage.completion_tokens, or the content chunks counted
	streamed bool            // TTFT and ITL were measured
	// sent is when the request was sent (zero when it never was); e2e is
	// then set for failed and cancelled requests too (up to the failure).
	sent time.Time

	// Multi-tenant runs only (client.trackLimits).
	status     int           // HTTP status of a non-2xx answer; 0 otherwise
	retryAfter time.Duration // Retry-After of the answer, when hasRetry
	hasRetry   bool
	limitHdrs  uint8 // bit i: the answer carried rateLimitHeaders[i]
}

// rateLimitHeaders are OpenAI's rate-limit headers, counted per answer in
// multi-tenant runs.
var rateLimitHeaders = [...]string{
	"x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
	"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
	"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
}

// noteLimits records the rate-limit headers of h and its Retry-After (in
// seconds; an HTTP date is counted with 0).
func (s *sample) noteLimits(h http.Header) {
	for i, name := range rateLimitHeaders {
		if h.Get(name) != "" {
			s.limitHdrs |= 1 << i
		}
	}
	if v := h.Get("Retry-After"); v != "" {
		s.hasRetry = true
		if secs, err := strconv.ParseFloat(v, 64); err == nil && secs >= 0 {
			s.retryAfter = seconds(secs)
		}
	}
}

// client sends requests through one tuned transport and measures them.
type client struct {
	hc      *http.Client
	tr      *http.Transport
	url     string
	header  http.Header // shared, read-only
	chat    bool
	stream  bool
	timeout time.Duration
	bufs    sync.Pool // *[]byte read buffers
	// trackLimits records status codes and rate-limit headers (tenants).
	trackLimits bool
}

const readBufSize = 32 << 10

func newClient(cfg Config) *client {
	path := "/v1/chat/completions"
	if cfg.Endpoint == EndpointCompletions {
		path = "/v1/completions"
	}
	tr := &http.Transport{
		Proxy:               nil, // measure the target, not a proxy from the environment
		DialContext:         (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0, // no global limit
		MaxIdleConnsPerHost: max(cfg.MaxConcurrency, 4096),
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false, // HTTP/1.1: one request per connection at a time, as engines are driven
		WriteBufferSize:     64 << 10,
		ReadBufferSize:      readBufSize,
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	if cfg.Stream {
		h.Set("Accept", "text/event-stream")
	} else {
		h.Set("Accept", "application/json")
	}
	if cfg.APIKey != "" {
		h.Set("Authorization", "Bearer "+cfg.APIKey)
	}
	c := &client{
		hc:      &http.Client{Transport: tr},
		tr:      tr,
		url:     strings.TrimRight(cfg.Target, "/") + path,
		header:  h,
		chat:    cfg.Endpoint == EndpointChat,
		stream:  cfg.Stream,
		timeout: cfg.Timeout,
	}
	c.bufs.New = func() any { b := make([]byte, readBufSize); return &b }
	return c
}

func (c *client) close() { c.tr.CloseIdleConnections() }

// do sends req and measures it; answer is the generated text when
// req.WantAnswer. Cancellation of ctx marks the sample cancelled.
func (c *client) do(ctx context.Context, req *Request) (s sample, answer string) {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	s.prompt = req.InputTokens
	fail := func(msg string) (sample, string) {
		s.outcome, s.errMsg = outcomeError, msg
		if !s.sent.IsZero() {
			s.e2e = time.Since(s.sent)
		}
		if ctx.Err() != nil {
			s.outcome = outcomeCancelled
		} else if errors.Is(rctx.Err(), context.DeadlineExceeded) {
			s.errMsg = fmt.Sprintf("request timed out after %v", c.timeout)
		}
		return s, ""
	}
	hreq, err := http.NewRequestWithContext(rctx, http.MethodPost, c.url, bytes.NewReader(req.Body))
	if err != nil {
		return fail(err.Error())
	}
	hreq.Header = c.header

	start := time.Now()
	s.sent = start
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return fail(err.Error())
	}
	defer resp.Body.Close()
	if c.trackLimits {
		s.noteLimits(resp.Header)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		s.status = resp.StatusCode
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fail(fmt.Sprintf("HTTP %d: %s", resp.StatusCode, errorText(body)))
	}
	if !c.stream || isJSON(resp.Header.Get("Content-Type")) {
		return c.readWhole(resp, req, start, &s, fail)
	}
	return c.readStream(resp, req, start, &s, fail)
}

// streamMeter measures a streamed response event by event: time to the
// first content chunk, the gaps between chunks, usage, and the text.
type streamMeter struct {
	s          *sample
	chat       bool
	wantAnswer bool
	start      time.Time
	last, now  time.Time // the previous content chunk; the read in hand
	text       []byte
	done       bool   // data: [DONE] arrived
	errText    string // the error event's message
}

// event takes one SSE event; errStop on an error event.
func (m *streamMeter) event(ev []byte) error {
	data, ok := openai.EventData(ev)
	if !ok || m.done {
		return nil
	}
	s := m.s
	if bytes.Equal(data, openai.DoneData) {
		m.done = true
		s.e2e = m.now.Sub(m.start)
		return nil
	}
	ch := scanChunk(data, m.chat, m.wantAnswer)
	if ch.isErr {
		m.errText = ch.errMsg
		return errStop
	}
	if ch.content {
		if s.chunks == 0 {
			s.ttft = m.now.Sub(m.start)
		} else {
			s.itl = append(s.itl, m.now.Sub(m.last))
		}
		m.last = m.now
		s.chunks++
		m.text = append(m.text, ch.text...)
	}
	if ch.usage != nil {
		s.usage = true
		s.prompt, s.cached, s.output = ch.usage.prompt(), ch.usage.cached(), ch.usage.CompletionTokens
	}
	return nil
}

// readStream handles a streamed (SSE) response up to data: [DONE].
func (c *client) readStream(resp *http.Response, req *Request, start time.Time, s *sample,
	fail func(string) (sample, string)) (sample, string) {
	s.streamed = true
	s.itl = make([]time.Duration, 0, max(req.OutputLen-1, 0))
	m := &streamMeter{s: s, chat: c.chat, wantAnswer: req.WantAnswer, start: start}
	var sp openai.EventSplitter
	onEvent := m.event
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := *bp
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			m.now = time.Now()
			if err := sp.Feed(buf[:n], onEvent); err != nil {
				return fail("stream error event: " + m.errText)
			}
		}
		if rerr == io.EOF || (rerr != nil && m.done) { // nothing after [DONE] matters
			break
		}
		if rerr != nil {
			return fail(rerr.Error())
		}
	}
	if !m.done {
		return fail("stream ended before data: [DONE]")
	}
	if !s.usage {
		s.output = s.chunks
	}
	return *s, string(m.text)
}

var errStop = errors.New("stop")

// readWhole handles a non-streamed (JSON) response.
func (c *client) readWhole(resp *http.Response, req *Request, start time.Time, s *sample,
	fail func(string) (sample, string)) (sample, string) {
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fail(err.Error())
	}
	s.e2e = time.Since(start)
	var r struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
			Text string `json:"text"`
		} `json:"choices"`
		Usage *usageJSON `json:"usage"`
	}
	if hasKey(body, `"error"`) || hasObjectError(body) {
		if msg, isErr := errorEvent(body); isErr {
			return fail(msg)
		}
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return fail(fmt.Sprintf("decode response: %v", err))
	}
	var text string
	if len(r.Choices) > 0 {
		text = r.Choices[0].Message.Content
		if !c.chat {
			text = r.Choices[0].Text
		}
	}
	if r.Usage != nil {
		s.usage = true
		s.prompt, s.cached, s.output = r.Usage.prompt(), r.Usage.cached(), r.Usage.CompletionTokens
	} else {
		s.output = (len(text) + CharsPerToken - 1) / CharsPerToken
	}
	if !req.WantAnswer {
		text = ""
	}
	return *s, text
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

type usageJSON struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

func (u *usageJSON) prompt() int { return u.PromptTokens }

func (u *usageJSON) cached() int {
	if u.PromptTokensDetails == nil {
		return 0
	}
	return u.PromptTokensDetails.CachedTokens
}

// chunk is what the client needs from one streamed chunk.
type chunk struct {
	content bool   // carries a non-empty token (content, text or reasoning_content)
	text    []byte // the content or text, when asked for (aliases data unless unescaped)
	usage   *usageJSON
	isErr   bool
	errMsg  string
}

// scanChunk reads one SSE data payload without decoding the whole JSON: the
// content keys are found by their quoted names (a quote inside a JSON string
// is escaped, so a match is always a key or a string value's start), and only
// the rare usage and error chunks are decoded.
func scanChunk(data []byte, chat, wantText bool) chunk {
	var ch chunk
	if hasKey(data, `"error"`) || hasObjectError(data) {
		if msg, isErr := errorEvent(data); isErr {
			ch.isErr, ch.errMsg = true, msg
			return ch
		}
	}
	key := `"text"`
	if chat {
		key = `"content"`
	}
	if v, ok := stringValue(data, key); ok && len(v) > 2 {
		ch.content = true
		if wantText {
			ch.text = unquote(v)
		}
	} else if chat {
		if v, ok := stringValue(data, `"reasoning_content"`); ok && len(v) > 2 {
			ch.content = true
		}
	}
	if v, ok := valueAfterKey(data, `"usage"`); ok && len(v) > 0 && v[0] == '{' {
		var u struct {
			Usage *usageJSON `json:"usage"`
		}
		if json.Unmarshal(data, &u) == nil && u.Usage != nil {
			ch.usage = u.Usage
		}
	}
	return ch
}

// valueAfterKey returns the bytes after the first occurrence of key (a quoted
// name) that is followed by a colon, whitespace skipped.
func valueAfterKey(data []byte, key string) ([]byte, bool) {
	for off := 0; ; {
		i := bytes.Index(data[off:], []byte(key))
		if i < 0 {
			return nil, false
		}
		rest := bytes.TrimLeft(data[off+i+len(key):], " \t\r\n")
		if len(rest) > 0 && rest[0] == ':' {
			return bytes.TrimLeft(rest[1:], " \t\r\n"), true
		}
		off += i + len(key)
	}
}

func hasKey(data []byte, key string) bool {
	_, ok := valueAfterKey(data, key)
	return ok
}

// hasObjectError spots vLLM's older error shape {"object":"error",...}.
func hasObjectError(data []byte) bool {
	v, ok := valueAfterKey(data, `"object"`)
	return ok && bytes.HasPrefix(v, []byte(`"error"`))
}

// stringValue returns the first string value (quotes included) of key; keys
// whose value is not a string (a logprobs "content" array) are skipped.
func stringValue(data []byte, key string) ([]byte, bool) {
	for off := 0; off < len(data); {
		i := bytes.Index(data[off:], []byte(key))
		if i < 0 {
			return nil, false
		}
		off += i + len(key)
		rest := bytes.TrimLeft(data[off:], " \t\r\n")
		if len(rest) == 0 || rest[0] != ':' {
			continue
		}
		rest = bytes.TrimLeft(rest[1:], " \t\r\n")
		if len(rest) == 0 || rest[0] != '"' {
			continue
		}
		for j := 1; j < len(rest); j++ {
			switch rest[j] {
			case '\\':
				j++
			case '"':
				return rest[:j+1], true
			}
		}
		return nil, false
	}
	return nil, false
}

// unquote returns the contents of a JSON string literal.
func unquote(v []byte) []byte {
	if bytes.IndexByte(v, '\\') < 0 {
		return v[1 : len(v)-1]
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return nil
	}
	return []byte(s)
}

// errorEvent recognises an error payload: {"error": {...}} (OpenAI, recent
// vLLM), {"error": "text"}, or {"object": "error", "message": ...} (older
// vLLM), and returns its message.
func errorEvent(data []byte) (string, bool) {
	var e struct {
		Error   json.RawMessage `json:"error"`
		Object  string          `json:"object"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(data, &e) != nil {
		return "", false
	}
	if len(e.Error) > 0 && string(e.Error) != "null" {
		var inner struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(e.Error, &inner) == nil && inner.Message != "" {
			return inner.Message, true
		}
		var s string
		if json.Unmarshal(e.Error, &s) == nil && s != "" {
			return s, true
		}
		return string(e.Error), true
	}
	if e.Object == "error" {
		return e.Message, true
	}
	return "", false
}

// errorText is the message of an error response body: the OpenAI error
// message when it has one, else the body itself, shortened.
func errorText(body []byte) string {
	if msg, ok := errorEvent(body); ok && msg != "" {
		return msg
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}
