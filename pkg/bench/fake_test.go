package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// fake usage figures: every response reports these, so the cache hit ratio is
// fakeCached/fakePrompt.
const (
	fakePrompt = 100
	fakeCached = 25
)

type failure int

const (
	failNone     failure = iota
	fail500              // HTTP 500 with an OpenAI error body
	failSSE              // two tokens, then data: {"error": ...}
	failTruncate         // tokens, then the stream ends without [DONE]
)

// wireRequest is what the fake decodes from a request.
type wireRequest struct {
	Model         string    `json:"model"`
	Messages      []message `json:"messages"`
	Prompt        *string   `json:"prompt"`
	MaxTokens     int       `json:"max_tokens"`
	IgnoreEOS     bool      `json:"ignore_eos"`
	Stream        bool      `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

type recorded struct {
	seq    int
	path   string
	auth   string
	req    wireRequest
	answer string
}

// fakeServer is an OpenAI-compatible server streaming SSE chunks with usage.
type fakeServer struct {
	*httptest.Server
	noUsage bool
	// fail decides the fate of request seq (0-based, in arrival order).
	fail func(seq int) failure
	// gate, when set, holds each request until it lets it through.
	gate *gate
	// seen, when set, receives each request's seq as it arrives.
	seen chan int
	// answer, when set, gives the headers of the answer to a request with
	// this Authorization header, and a status that, when not 0, is
	// answered at once as an OpenAI error.
	answer func(auth string) (status int, h http.Header)

	mu          sync.Mutex
	reqs        []recorded
	inFlight    int
	maxInFlight int
}

func newFake(t *testing.T, configure func(*fakeServer)) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	if configure != nil {
		configure(f)
	}
	f.Server = httptest.NewServer(http.HandlerFunc(f.handle))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func (f *fakeServer) maxConcurrent() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maxInFlight
}

func (f *fakeServer) handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var req wireRequest
	if err := json.Unmarshal(body, &req); err != nil {
		openai.WriteError(w, http.StatusBadRequest, openai.ErrMalformedJSON, 0)
		return
	}
	f.mu.Lock()
	seq := len(f.reqs)
	f.reqs = append(f.reqs, recorded{seq: seq, path: r.URL.Path, auth: r.Header.Get("Authorization"), req: req})
	f.inFlight++
	f.maxInFlight = max(f.maxInFlight, f.inFlight)
	f.mu.Unlock()
	if f.seen != nil {
		f.seen <- seq
	}
	// leave is called before the last bytes go out, so the count seen here
	// never exceeds the client's own.
	left := false
	leave := func() {
		if !left {
			left = true
			f.mu.Lock()
			f.inFlight--
			f.mu.Unlock()
		}
	}
	defer leave()
	if f.gate != nil {
		f.gate.pass()
		defer f.gate.leave()
	}

	if f.answer != nil {
		status, h := f.answer(r.Header.Get("Authorization"))
		for k, v := range h {
			w.Header()[k] = v
		}
		if status != 0 {
			leave()
			openai.WriteError(w, status, openai.Err(openai.TypeServer, "refused", http.StatusText(status)), 0)
			return
		}
	}
	fate := failNone
	if f.fail != nil {
		fate = f.fail(seq)
	}
	if fate == fail500 {
		leave()
		openai.WriteError(w, http.StatusInternalServerError, openai.Err(openai.TypeServer, "boom", fmt.Sprintf("engine exploded on request %d", seq%2)), 0)
		return
	}
	chat := r.URL.Path == "/v1/chat/completions"
	words := make([]string, req.MaxTokens)
	for i := range words {
		words[i] = fmt.Sprintf("r%dw%d ", seq, i)
	}
	answer := strings.Join(words, "")
	f.mu.Lock()
	f.reqs[seq].answer = answer
	f.mu.Unlock()

	usage := fmt.Sprintf(`{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d,"prompt_tokens_details":{"cached_tokens":%d}}`,
		fakePrompt, fakePrompt+req.MaxTokens, req.MaxTokens, fakeCached)
	if !req.Stream {
		w.Header().Set("Content-Type", "application/json")
		leave()
		var resp string
		if chat {
			resp = fmt.Sprintf(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"length"}]`, answer)
		} else {
			resp = fmt.Sprintf(`{"id":"x","object":"text_completion","choices":[{"index":0,"text":%q,"finish_reason":"length"}]`, answer)
		}
		if !f.noUsage {
			resp += `,"usage":` + usage
		}
		_, _ = io.WriteString(w, resp+"}")
		return
	}

	w.Header().Set("Content-Type", "text/event-stream")
	flusher := w.(http.Flusher)
	send := func(s string) {
		_, _ = io.WriteString(w, s)
		flusher.Flush()
	}
	tokenChunk := func(text string) string {
		if chat {
			return fmt.Sprintf(`data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":%q},"logprobs":null,"finish_reason":null}],"usage":null}`+"\n\n", text)
		}
		return fmt.Sprintf(`data: {"id":"x","object":"text_completion","choices":[{"index":0,"text":%q,"logprobs":null,"finish_reason":null}],"usage":null}`+"\n\n", text)
	}
	if chat {
		send(`data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}` + "\n\n")
	}
	for i, wd := range words {
		if fate == failSSE && i == 2 {
			leave()
			send(string(openai.ErrorEvent(openai.Err(openai.TypeServer, "engine_died", "engine died mid-stream"))))
			return
		}
		send(tokenChunk(wd))
	}
	if fate == failTruncate {
		leave()
		return
	}
	send(`data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"length"}],"usage":null}` + "\n\n")
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage && !f.noUsage {
		send(`data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":` + usage + "}\n\n")
	}
	leave()
	send("data: [DONE]\n\n")
}

// gate holds each request until limit requests are inside at once, or until
// every one of total requests has arrived; it proves a concurrency cap is
// reached without ever sleeping.
type gate struct {
	mu      sync.Mutex
	cond    *sync.Cond
	limit   int
	total   int
	arrived int
	inside  int
}

func newGate(limit, total int) *gate {
	g := &gate{limit: limit, total: total}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *gate) pass() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.arrived++
	g.inside++
	g.cond.Broadcast()
	for g.inside < g.limit && g.arrived < g.total {
		g.cond.Wait()
	}
}

func (g *gate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inside--
}

// testConfig is a small valid config against f.
func testConfig(f *fakeServer) Config {
	c := DefaultConfig()
	c.Target = f.URL
	c.Model = "m"
	c.InputLen = 8
	c.OutputLen = 5
	c.NumPrompts = 20
	c.MaxConcurrency = 4
	c.Timeout = 30e9
	return c
}

func requireNoErr(t *testing.T, res *Result, err error) {
	t.Helper()
	require.NoError(t, err)
	require.NotNil(t, res)
}
