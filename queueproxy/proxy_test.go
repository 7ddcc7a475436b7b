package queueproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
)

func TestProxyNonStreaming(t *testing.T) {
	upstream := make(chan *http.Request, 1)
	bodies := make(chan string, 1)
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			upstream <- r
			bodies <- string(b)
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-Engine", "yes")
			w.Header().Set(openai.UsageHeader, "prompt=1, completion=1, cached=0") // forged: dropped
			_, _ = io.WriteString(w, completionBody)
		},
	})
	p := newProxy(t, eng.URL, false)

	// Odd spacing and key order must reach the engine untouched.
	body := `{ "model":"m",  "messages":[{"role":"user","content":"hi"}], "stream": false }`
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodPost, p.srv.URL+"/v1/chat/completions?x=1", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "drop me")
	req.Header.Set("X-End-To-End", "keep me")
	resp, err := p.srv.Client().Do(req)
	require.NoError(t, err)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())

	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, completionBody, string(got))
	assert.Equal(t, "yes", resp.Header.Get("X-Engine"))
	// The activator learns the measured usage, never the engine's forgery.
	assert.Equal(t, []string{"prompt=7, completion=3, cached=4"}, resp.Header.Values(openai.UsageHeader))
	assert.Equal(t, body, recv(t, bodies, "upstream body"))
	up := recv(t, upstream, "upstream request")
	assert.Equal(t, "keep me", up.Header.Get("X-End-To-End"))
	assert.Empty(t, up.Header.Get("X-Hop"))
	assert.Equal(t, "x=1", up.URL.RawQuery)

	require.Eventually(t, func() bool { return p.Stat().Requests == 1 }, waitFor, tick)
	s := p.Stat()
	assert.Equal(t, uint64(0), s.Errors)
	assert.Equal(t, uint64(7), s.PromptTokens)
	assert.Equal(t, uint64(4), s.CachedTokens)
	assert.Equal(t, uint64(3), s.CompletionTokens)
	assert.Equal(t, uint64(0), s.TTFTCount)
}

// streamEngine serves a chat stream: the role chunk and "Hel" at once, then
// "lo" when step yields, then the usage chunk if the request asked for it,
// with a forged Kvasir-Usage header and trailer. It hands over each request body on bodies.
func streamEngine(t *testing.T, step <-chan struct{}, bodies chan<- string) *engine {
	return newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			bodies <- string(b)
			// Forged usage, as a header and as a trailer: never passed on.
			w.Header().Set(openai.UsageHeader, "prompt=999, completion=999")
			w.Header().Set("Trailer", openai.UsageHeader)
			defer w.Header().Set(openai.UsageHeader, "prompt=998, completion=998")
			startStream(w)
			writeEvent(w, chunkRole)
			writeEvent(w, chunkHel)
			select {
			case <-step:
			case <-r.Context().Done():
				return
			}
			writeEvent(w, chunkLo)
			writeEvent(w, chunkStop)
			if wantsUsage(t, b) {
				writeEvent(w, chunkUsage)
			}
			writeEvent(w, "[DONE]")
		},
	})
}

func TestProxyStreaming(t *testing.T) {
	for _, tc := range []struct {
		name         string
		body         string
		wantUpstream string // empty: the body unchanged
		wantUsage    bool   // the client sees the usage chunk
	}{{
		name:         "usage injected and stripped",
		body:         `{"model":"m","stream":true,"messages":[]}`,
		wantUpstream: `{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}`,
	}, {
		name:         "other stream options kept",
		body:         `{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false},"messages":[]}`,
		wantUpstream: `{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false,"include_usage":true},"messages":[]}`,
	}, {
		name:         "explicit false overridden and stripped",
		body:         `{"model":"m","stream":true,"stream_options":{"include_usage":false}}`,
		wantUpstream: `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
	}, {
		name:      "asked by the client: kept",
		body:      `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}`,
		wantUsage: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			step := make(chan struct{})
			bodies := make(chan string, 1)
			eng := streamEngine(t, step, bodies)
			p := newProxy(t, eng.URL, false)

			resp := p.post(t, testCtx(t), "/v1/chat/completions", tc.body)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
			want := tc.wantUpstream
			if want == "" {
				want = tc.body
			}
			assert.Equal(t, want, recv(t, bodies, "upstream body"))

			// The first events arrive while the engine still holds the rest.
			rd := bufio.NewReader(resp.Body)
			assert.Equal(t, "data: "+chunkRole+"\n\n", readEvent(t, rd))
			assert.Equal(t, "data: "+chunkHel+"\n\n", readEvent(t, rd))
			close(step)
			rest, err := io.ReadAll(rd)
			require.NoError(t, err)
			wantRest := "data: " + chunkLo + "\n\n" + "data: " + chunkStop + "\n\n"
			if tc.wantUsage {
				wantRest += "data: " + chunkUsage + "\n\n"
			}
			wantRest += "data: [DONE]\n\n"
			assert.Equal(t, wantRest, string(rest))
			// The measured usage follows the stream as a trailer, whether or
			// not the client sees the usage chunk.
			assert.Empty(t, resp.Header.Get(openai.UsageHeader))
			assert.Equal(t, "prompt=12, completion=2, cached=8", resp.Trailer.Get(openai.UsageHeader))

			require.Eventually(t, func() bool { return p.Stat().Requests == 1 }, waitFor, tick)
			s := p.Stat()
			assert.Equal(t, uint64(0), s.Errors)
			assert.Equal(t, uint64(12), s.PromptTokens)
			assert.Equal(t, uint64(8), s.CachedTokens)
			assert.Equal(t, uint64(2), s.CompletionTokens)
			assert.Equal(t, uint64(1), s.TTFTCount)
			assert.Positive(t, s.TTFTSecondsSum)
			assert.Equal(t, uint64(1), s.ITLCount) // "Hel" → "lo"
			assert.Positive(t, s.ITLSecondsSum)
		})
	}
}

func TestProxyCompletionsStreamText(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/completions": func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			startStream(w)
			for _, text := range []string{"a", "b", "c"} {
				writeEvent(w, `{"object":"text_completion","choices":[{"index":0,"text":"`+text+`"}]}`)
			}
			if wantsUsage(t, b) {
				writeEvent(w, `{"object":"text_completion","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}`)
			}
			writeEvent(w, "[DONE]")
		},
	})
	p := newProxy(t, eng.URL, false)
	resp := p.post(t, testCtx(t), "/v1/completions", `{"model":"m","prompt":"x","stream":true}`)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.NotContains(t, string(got), "usage")
	assert.True(t, strings.HasSuffix(string(got), "data: [DONE]\n\n"))

	require.Eventually(t, func() bool { return p.Stat().Requests == 1 }, waitFor, tick)
	s := p.Stat()
	assert.Equal(t, uint64(5), s.PromptTokens)
	assert.Equal(t, uint64(3), s.CompletionTokens)
	assert.Equal(t, uint64(1), s.TTFTCount)
	assert.Equal(t, uint64(2), s.ITLCount)
}

func TestProxyOtherPathsPassThrough(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"GET /v1/models": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"data":[{"id":"m"}]}`)
		},
	})
	p := newProxy(t, eng.URL, false)
	resp := p.get(t, "/v1/models")
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.Equal(t, `{"data":[{"id":"m"}]}`, string(got))

	resp = p.get(t, "/metrics") // the engine's, not ours
	got, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	assert.Equal(t, vllmMetrics, string(got))

	// Only inference is counted: the activator's tokenization and other
	// engine endpoints are not requests of the model.
	assert.Zero(t, p.Stat().Requests)
}

// A tokenization passes while the only slot is taken by a request in
// flight: it never waits behind inference.
func TestNonInferenceBypassesTheLimit(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			entered <- struct{}{}
			<-release
			_, _ = io.WriteString(w, completionBody)
		},
		"POST /tokenize": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, `{"count":1,"tokens":[7]}`)
		},
	})
	p := newProxy(t, eng.URL, false, "--container-concurrency=1", "--queue-depth=0")
	done := p.postAsync(testCtx(t), "/v1/chat/completions", openaitest.ChatBody("m", "", openaitest.User("hi")))
	recv(t, entered, "the chat request reached the engine")
	resp := p.post(t, testCtx(t), "/tokenize", `{"model":"m","prompt":"hi"}`)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.JSONEq(t, `{"count":1,"tokens":[7]}`, string(got))
	close(release)
	require.Equal(t, http.StatusOK, recv(t, done, "the chat answer").code)
}

func TestProxyEngineUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now

	p := newProxy(t, "http://"+addr, false)
	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m"}`)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	e := decodeError(t, resp)
	assert.Equal(t, openai.TypeServer, e.Type)
	assert.Equal(t, "engine_unavailable", e.Code)
	assert.Contains(t, e.Message, "connection refused")
	require.Eventually(t, func() bool { return p.Stat().Errors == 1 }, waitFor, tick)
}

func TestProxyBodyTooLarge(t *testing.T) {
	eng := newEngine(t, nil)
	p := newProxy(t, eng.URL, false, "--max-body-bytes=16")
	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m","messages":[{"role":"user"}]}`)
	assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	assert.Equal(t, openai.ErrBodyTooLarge, decodeError(t, resp))
}

func TestReservedPrefixUnknown(t *testing.T) {
	eng := newEngine(t, nil)
	p := newProxy(t, eng.URL, false)
	resp := p.get(t, "/kvasir/nope")
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
	assert.Equal(t, openai.TypeNotFound, decodeError(t, resp).Type)
}

func TestReadinessFollowsEngine(t *testing.T) {
	eng := newEngine(t, nil)
	eng.health.Store(http.StatusServiceUnavailable)
	p := newProxy(t, eng.URL, true)

	assert.Equal(t, http.StatusServiceUnavailable, p.readyCode(t))
	// Not known ready: the probe happens with the request, no waiting.
	eng.health.Store(http.StatusOK)
	assert.Equal(t, http.StatusOK, p.readyCode(t))
	assert.True(t, p.Stat().Ready)

	// Known ready: the background prober notices the engine failing.
	eng.health.Store(http.StatusServiceUnavailable)
	require.Eventually(t, func() bool { return p.readyCode(t) == http.StatusServiceUnavailable }, waitFor, tick)
	assert.False(t, p.Stat().Ready)

	eng.health.Store(http.StatusOK)
	assert.Equal(t, http.StatusOK, p.readyCode(t))

	// The engine goes away entirely.
	eng.Close()
	require.Eventually(t, func() bool { return p.readyCode(t) == http.StatusServiceUnavailable }, waitFor, tick)
}

func TestConcurrencyLimitQueue(t *testing.T) {
	arrived := make(chan string, 3)
	release := make(chan struct{})
	var running, maxRunning atomic.Int32
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			n := running.Add(1)
			defer running.Add(-1)
			for m := maxRunning.Load(); n > m && !maxRunning.CompareAndSwap(m, n); m = maxRunning.Load() {
			}
			b, _ := io.ReadAll(r.Body)
			arrived <- string(b)
			<-release
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, completionBody)
		},
	})
	p := newProxy(t, eng.URL, false, "--container-concurrency=1", "--queue-depth=1")
	ctx := testCtx(t)

	first := p.postAsync(ctx, "/v1/chat/completions", `{"n":1}`)
	assert.Equal(t, `{"n":1}`, recv(t, arrived, "first request at the engine"))
	second := p.postAsync(ctx, "/v1/chat/completions", `{"n":2}`)
	require.Eventually(t, func() bool { return p.Stat().Queued == 1 }, waitFor, tick)
	assert.Equal(t, 1, p.Stat().InFlight)

	resp := p.post(t, ctx, "/v1/chat/completions", `{"n":3}`)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))
	e := decodeError(t, resp)
	assert.Equal(t, openai.TypeUnavailable, e.Type)
	assert.Equal(t, "queue_full", e.Code)

	release <- struct{}{} // the first finishes; the queued one goes on
	assert.Equal(t, result{code: http.StatusOK, body: completionBody}, recv(t, first, "first response"))
	assert.Equal(t, `{"n":2}`, recv(t, arrived, "queued request at the engine"))
	assert.Equal(t, 0, p.Stat().Queued)
	release <- struct{}{}
	assert.Equal(t, result{code: http.StatusOK, body: completionBody}, recv(t, second, "queued response"))
	assert.Equal(t, int32(1), maxRunning.Load())

	require.Eventually(t, func() bool { return p.Stat().Requests == 3 }, waitFor, tick)
	s := p.Stat()
	assert.Equal(t, uint64(1), s.Errors) // the 503
	assert.Equal(t, 0, s.InFlight)
}

func TestQueuedClientLeaves(t *testing.T) {
	arrived := make(chan struct{}, 2)
	release := make(chan struct{})
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body)
			arrived <- struct{}{}
			<-release
		},
	})
	p := newProxy(t, eng.URL, false, "--container-concurrency=1", "--queue-depth=1")

	first := p.postAsync(testCtx(t), "/v1/chat/completions", `{}`)
	recv(t, arrived, "first request at the engine")

	ctx, cancel := context.WithCancel(testCtx(t))
	gone := p.postAsync(ctx, "/v1/chat/completions", `{}`)
	require.Eventually(t, func() bool { return p.Stat().Queued == 1 }, waitFor, tick)
	cancel()
	require.ErrorIs(t, recv(t, gone, "cancelled request").err, context.Canceled)
	require.Eventually(t, func() bool { return p.Stat().Queued == 0 }, waitFor, tick)

	// The queue has room again.
	third := p.postAsync(testCtx(t), "/v1/chat/completions", `{}`)
	require.Eventually(t, func() bool { return p.Stat().Queued == 1 }, waitFor, tick)
	close(release)
	assert.Equal(t, http.StatusOK, recv(t, first, "first response").code)
	recv(t, arrived, "third request at the engine")
	assert.Equal(t, http.StatusOK, recv(t, third, "third response").code)
	require.Eventually(t, func() bool { return p.Stat().Requests == 3 }, waitFor, tick)
	assert.Equal(t, uint64(0), p.Stat().Errors)
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.ReadAll(r.Body) // the server notices a closed connection only after the body
			startStream(w)
			writeEvent(w, chunkHel)
			<-r.Context().Done()
			close(cancelled)
		},
	})
	p := newProxy(t, eng.URL, false)
	ctx, cancel := context.WithCancel(testCtx(t))
	resp := p.post(t, ctx, "/v1/chat/completions", `{"model":"m","stream":true}`)
	defer resp.Body.Close()
	assert.Equal(t, "data: "+chunkHel+"\n\n", readEvent(t, bufio.NewReader(resp.Body)))
	cancel()
	recv(t, cancelled, "the engine to see its request cancelled")

	require.Eventually(t, func() bool { return p.Stat().Requests == 1 }, waitFor, tick)
	s := p.Stat()
	assert.Equal(t, uint64(0), s.Errors)
	assert.Equal(t, 0, s.InFlight)
}

// dieAfter makes a handler drop its connection without finishing the response.
func dieAfter(t *testing.T, w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	_ = conn.Close()
}

func TestEngineDiesMidStream(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			startStream(w)
			writeEvent(w, chunkHel)
			_, _ = io.WriteString(w, `data: {"choices":[{"delta":{"content":"trunc`) // half an event
			_ = http.NewResponseController(w).Flush()
			dieAfter(t, w)
		},
	})
	p := newProxy(t, eng.URL, false)
	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m","stream":true}`)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "the client's response ends cleanly")
	require.NoError(t, resp.Body.Close())

	rd := bufio.NewReader(strings.NewReader(string(got)))
	assert.Equal(t, "data: "+chunkHel+"\n\n", readEvent(t, rd))
	errEvent := readEvent(t, rd)
	data, ok := openai.EventData([]byte(errEvent))
	require.True(t, ok)
	var env openai.Envelope
	require.NoError(t, json.Unmarshal(data, &env))
	assert.Equal(t, openai.TypeServer, env.Error.Type)
	assert.Equal(t, "engine_unavailable", env.Error.Code)
	assert.Contains(t, env.Error.Message, "mid-stream")
	_, err = rd.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "nothing after the error event")

	require.Eventually(t, func() bool { return p.Stat().Requests == 1 }, waitFor, tick)
	assert.Equal(t, uint64(1), p.Stat().Errors)
}

func TestEngineDiesMidBody(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "1000")
			_, _ = io.WriteString(w, completionBody[:20])
			_ = http.NewResponseController(w).Flush()
			dieAfter(t, w)
		},
	})
	p := newProxy(t, eng.URL, false)
	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{"model":"m"}`)
	assert.Equal(t, http.StatusBadGateway, resp.StatusCode)
	e := decodeError(t, resp)
	assert.Equal(t, "engine_unavailable", e.Code)
	assert.Contains(t, e.Message, "mid-response")
	require.Eventually(t, func() bool { return p.Stat().Errors == 1 }, waitFor, tick)
}

func TestMetricsEndpoint(t *testing.T) {
	eng := newEngine(t, map[string]http.HandlerFunc{
		"POST /v1/chat/completions": func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, completionBody)
		},
	})
	p := newProxy(t, eng.URL, false)
	resp := p.post(t, testCtx(t), "/v1/chat/completions", `{}`)
	_ = resp.Body.Close()
	require.Eventually(t, func() bool { return p.Stat().Requests == 1 }, waitFor, tick)

	resp = p.get(t, MetricsPath)
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	for _, line := range []string{
		`kvasir_queueproxy_requests_total{code="200"} 1`,
		`kvasir_queueproxy_prompt_tokens_total 7`,
		`kvasir_queueproxy_cached_tokens_total 4`,
		`kvasir_queueproxy_completion_tokens_total 3`,
		`kvasir_queueproxy_in_flight 0`,
		`kvasir_queueproxy_queued 0`,
		`kvasir_queueproxy_ttft_seconds_count 0`,
		`kvasir_queueproxy_itl_seconds_count 0`,
	} {
		assert.Contains(t, string(got), "\n"+line+"\n")
	}
}

func TestEngineScrape(t *testing.T) {
	var fail atomic.Bool
	eng := newEngine(t, map[string]http.HandlerFunc{
		"GET /m": func(w http.ResponseWriter, r *http.Request) {
			if fail.Load() {
				http.Error(w, "boom", http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, vllmMetrics)
		},
	})
	p := newProxy(t, eng.URL, true, "--engine-metrics-path=/m")
	require.Eventually(t, func() bool { return p.Stat().Engine.Scraped }, waitFor, tick)
	assert.Equal(t, stats.EngineStat{Scraped: true, Running: 3, Waiting: 1, KVCacheUsage: 0.25}, p.Stat().Engine)
	fail.Store(true)
	require.Eventually(t, func() bool { return !p.Stat().Engine.Scraped }, waitFor, tick)
}
