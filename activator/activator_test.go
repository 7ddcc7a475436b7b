package activator

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// harness is an activator serving model "m" (revision m-1, tag "canary" on
// m-2) behind an httptest server.
type harness struct {
	act    *Activator
	srv    *fastServer
	demand chan fleet.Key
}

func newHarness(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	cfg := DefaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	h := &harness{demand: make(chan fleet.Key, 100)}
	act, err := New(cfg, WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false), WithOnDemand(func(k fleet.Key) {
		select {
		case h.demand <- k:
		default:
		}
	}))
	require.NoError(t, err)
	require.NoError(t, act.SetServices([]ServiceConfig{{
		Namespace: "default", Name: "svc", Model: "m",
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}, {Revision: "m-2", Tag: "canary"}},
		Revisions: []RevisionConfig{{Name: "m-1"}, {Name: "m-2"}},
	}}))
	h.act = act
	t.Cleanup(act.Close)
	h.srv = newFastServer(t, act.FastHandler())
	t.Cleanup(h.srv.Close)
	return h
}

func key(rev string) fleet.Key { return fleet.Key{Namespace: "default", Service: "svc", Revision: rev} }

func backend(t *testing.T, name string, h http.HandlerFunc) fleet.Endpoint {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return fleet.Endpoint{Name: name, Address: strings.TrimPrefix(s.URL, "http://")}
}

func okBackend(t *testing.T, name string) fleet.Endpoint {
	return backend(t, name, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q,"got":%s}`, name, body)
	})
}

func post(t *testing.T, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+PathChat, strings.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func requireOpenAIError(t *testing.T, body []byte, code string) {
	t.Helper()
	var env openai.Envelope
	require.NoError(t, json.Unmarshal(body, &env), string(body))
	require.Equal(t, code, env.Error.Code, string(body))
	require.NotEmpty(t, env.Error.Message)
	require.NotEmpty(t, env.Error.Type)
}

func TestBufferedUntilReplicaReady(t *testing.T) {
	h := newHarness(t, nil)
	type result struct {
		code int
		body []byte
	}
	done := make(chan result, 1)
	go func() {
		resp, b := post(t, h.srv.URL, `{"model":"m","messages":[]}`)
		done <- result{resp.StatusCode, b}
	}()
	require.Equal(t, key("m-1"), <-h.demand, "a buffered request asks for scale-up at once")
	l, _ := h.act.Load(key("m-1"))
	require.Equal(t, 1, l.Buffered)
	require.Equal(t, l, h.act.Loads()[key("m-1")], "what the autoscaler is told")
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{okBackend(t, "r1")})
	r := <-done
	require.Equal(t, http.StatusOK, r.code)
	require.Contains(t, string(r.body), `"served_by":"r1"`)
	require.Contains(t, string(r.body), `"got":{"model":"m","messages":[]}`, "body passed through byte for byte")
}

func TestBufferTimeoutAnswers503(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.BufferTimeout = 20 * time.Millisecond })
	resp, body := post(t, h.srv.URL, `{"model":"m"}`)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	requireOpenAIError(t, body, "buffer_timeout")
	l, _ := h.act.Load(key("m-1"))
	require.Zero(t, l.Buffered, "a timed-out request leaves the buffer")
}

func TestBufferFull(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxBuffered = 1 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.srv.URL+PathChat, strings.NewReader(`{"model":"m"}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-h.demand
	resp, body := post(t, h.srv.URL, `{"model":"m"}`)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	requireOpenAIError(t, body, "queue_full")
}

func TestBadInput(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxBodyBytes = 1024 })
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{okBackend(t, "r1")})
	for name, tc := range map[string]struct {
		body   string
		status int
		code   string
	}{
		"malformed":      {`{"model": "m",`, 400, "invalid_json"},
		"not an object":  {`["m"]`, 400, "invalid_json"},
		"missing model":  {`{"messages":[]}`, 400, "model_required"},
		"unknown model":  {`{"model":"nope"}`, 404, "model_not_found"},
		"unknown tag":    {`{"model":"m@nope"}`, 404, "tag_not_found"},
		"oversized body": {`{"model":"m","pad":"` + strings.Repeat("x", 2048) + `"}`, 413, "request_too_large"},
	} {
		t.Run(name, func(t *testing.T) {
			resp, body := post(t, h.srv.URL, tc.body)
			require.Equal(t, tc.status, resp.StatusCode, string(body))
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			requireOpenAIError(t, body, tc.code)
		})
	}
}

func TestTagRouting(t *testing.T) {
	h := newHarness(t, nil)
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{okBackend(t, "stable")})
	h.act.SetEndpoints(key("m-2"), []fleet.Endpoint{okBackend(t, "canary")})
	_, body := post(t, h.srv.URL, `{"model":"m"}`)
	require.Contains(t, string(body), `"served_by":"stable"`)
	_, body = post(t, h.srv.URL, `{"model":"m@canary","x":1}`)
	require.Contains(t, string(body), `"served_by":"canary"`)
	require.Contains(t, string(body), `"got":{"model":"m","x":1}`, "the tag is removed from the model the engine sees")
	_, body = post(t, h.srv.URL, `{"model":"m"}`, TagHeader, "canary")
	require.Contains(t, string(body), `"served_by":"canary"`)
}

func TestConnectionRefusedIsRetriedOnAnotherReplica(t *testing.T) {
	h := newHarness(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := fleet.Endpoint{Name: "dead", Address: ln.Addr().String()}
	require.NoError(t, ln.Close())
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{dead, okBackend(t, "live")})
	for i := 0; i < 20; i++ {
		resp, body := post(t, h.srv.URL, `{"model":"m"}`)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Contains(t, string(body), `"served_by":"live"`)
	}
}

func sseBackend(t *testing.T, name string, release <-chan struct{}, failMid bool) fleet.Endpoint {
	return backend(t, name, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"n\":1}\n\n")
		w.(http.Flusher).Flush()
		<-release
		if failMid {
			fmt.Fprint(w, "data: {\"n\":2, \"torn") // half an event, then the engine dies
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		fmt.Fprint(w, "data: {\"n\":2}\n\ndata: [DONE]\n\n")
	})
}

func TestStreamIsFlushedPerChunk(t *testing.T) {
	h := newHarness(t, nil)
	release := make(chan struct{})
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{sseBackend(t, "r", release, false)})
	resp, err := http.Post(h.srv.URL+PathChat, "application/json", strings.NewReader(`{"model":"m","stream":true}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	line, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "data: {\"n\":1}\n", line, "the first chunk arrives before the engine sends the second")
	close(release)
	rest, err := io.ReadAll(rd)
	require.NoError(t, err)
	require.Equal(t, "\ndata: {\"n\":2}\n\ndata: [DONE]\n\n", string(rest))
}

func TestEngineDeathMidStreamGivesOneErrorEvent(t *testing.T) {
	h := newHarness(t, nil)
	release := make(chan struct{})
	close(release)
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{sseBackend(t, "r", release, true)})
	resp, err := http.Post(h.srv.URL+PathChat, "application/json", strings.NewReader(`{"model":"m","stream":true}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	events := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
	require.Len(t, events, 2, string(body))
	require.Equal(t, `data: {"n":1}`, events[0])
	require.True(t, strings.HasPrefix(events[1], `data: {"error":`), "the torn event is dropped, an error event follows: %q", body)
	var env openai.Envelope
	require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(events[1], "data: ")), &env))
	require.Equal(t, "upstream_failed", env.Error.Code)
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	h := newHarness(t, nil)
	upstreamGone := make(chan struct{})
	started := make(chan struct{})
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {}\n\n")
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
		close(upstreamGone)
	})})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.srv.URL+PathChat, strings.NewReader(`{"model":"m","stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	<-started
	cancel()
	resp.Body.Close()
	select {
	case <-upstreamGone:
	case <-time.After(10 * time.Second):
		t.Fatal("upstream request was not cancelled after the client went away")
	}
	require.Eventually(t, func() bool { l, _ := h.act.Load(key("m-1")); return l.InFlight == 0 }, 5*time.Second, 5*time.Millisecond)
}

func TestWebSocketMultiplexesRequests(t *testing.T) {
	h := newHarness(t, nil)
	var mu sync.Mutex
	gates := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Tag       string          `json:"tag"`
			RequestID json.RawMessage `json:"request_id"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		if req.RequestID != nil {
			http.Error(w, "request_id leaked to the engine", 500)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		mu.Lock()
		gate := gates[req.Tag]
		mu.Unlock()
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: {\"tag\":%q,\"i\":%d}\n\n", req.Tag, i)
			w.(http.Flusher).Flush()
			if i == 0 {
				<-gate // both requests are in flight on one connection at once
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})})
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(h.srv.URL, "http")+PathChat, nil)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"model":"m","stream":true,"tag":"a","request_id":"A"}`)))
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"model":"m","stream":true,"tag":"b","request_id":7}`)))
	got := map[string][]int{}
	done := map[string]bool{}
	firsts := 0
	for len(done) < 2 {
		_, msg, err := conn.ReadMessage()
		require.NoError(t, err)
		var m struct {
			RequestID json.RawMessage `json:"request_id"`
			Type      string          `json:"type"`
			Tag       string          `json:"tag"`
			I         int             `json:"i"`
			Error     *openai.Error   `json:"error"`
		}
		require.NoError(t, json.Unmarshal(msg, &m), string(msg))
		require.Nil(t, m.Error, string(msg))
		id := string(m.RequestID)
		if m.Type == "done" {
			done[id] = true
			continue
		}
		require.Equal(t, map[string]string{`"A"`: "a", `7`: "b"}[id], m.Tag, "chunk carries its request_id: %s", msg)
		got[id] = append(got[id], m.I)
		if m.I == 0 {
			if firsts++; firsts == 2 {
				close(gates["a"])
				close(gates["b"])
			}
		}
	}
	require.Equal(t, map[string][]int{`"A"`: {0, 1, 2}, `7`: {0, 1, 2}}, got)
}

func TestWebSocketErrors(t *testing.T) {
	h := newHarness(t, nil)
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(h.srv.URL, "http")+PathChat, nil)
	require.NoError(t, err)
	defer conn.Close()
	for _, tc := range []struct{ msg, id, code string }{
		{`{"model":"nope","request_id":"x"}`, `"x"`, "model_not_found"},
		{`{"request_id":"y"}`, `"y"`, "model_required"},
		{`{not json`, `null`, "invalid_json"},
	} {
		require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(tc.msg)))
		_, msg, err := conn.ReadMessage()
		require.NoError(t, err)
		var m struct {
			RequestID json.RawMessage `json:"request_id"`
			Error     openai.Error    `json:"error"`
		}
		require.NoError(t, json.Unmarshal(msg, &m))
		require.Equal(t, tc.id, string(m.RequestID))
		require.Equal(t, tc.code, m.Error.Code)
	}
}

func TestModelsList(t *testing.T) {
	h := newHarness(t, nil)
	resp, err := http.Get(h.srv.URL + PathModels)
	require.NoError(t, err)
	defer resp.Body.Close()
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
	require.Equal(t, "list", list.Object)
	require.Len(t, list.Data, 1)
	require.Equal(t, "m", list.Data[0].ID)
}

func TestDepartedReplicaConnectionsAreClosed(t *testing.T) {
	h := newHarness(t, nil)
	closed := make(chan struct{})
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{}`)) }))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			close(closed)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	ep := fleet.Endpoint{Name: "r", Address: strings.TrimPrefix(s.URL, "http://")}
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{ep})
	resp, _ := post(t, h.srv.URL, `{"model":"m"}`)
	require.Equal(t, http.StatusOK, resp.StatusCode) // leaves one kept-alive connection in the pool
	h.act.SetEndpoints(key("m-1"), nil)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the pooled connection to a departed replica stayed open")
	}
}

func TestUpstreamTimeoutIsNotRetried(t *testing.T) {
	h := newHarness(t, nil)
	block := make(chan struct{})
	defer close(block)
	var calls atomic.Int32
	slow := func(name string) fleet.Endpoint {
		return backend(t, name, func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			select {
			case <-block:
			case <-r.Context().Done():
			}
		})
	}
	require.NoError(t, h.act.SetServices([]ServiceConfig{{Namespace: "default", Name: "svc", Model: "m",
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}},
		Revisions: []RevisionConfig{{Name: "m-1", Timeout: 100 * time.Millisecond}}}}))
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{slow("a"), slow("b")})
	resp, body := post(t, h.srv.URL, `{"model":"m"}`)
	require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	requireOpenAIError(t, body, "upstream_timeout")
	require.EqualValues(t, 1, calls.Load(), "a timed-out request is not sent to a second replica")
}

func TestJSONContentTypeWhateverTheClientSent(t *testing.T) {
	h := newHarness(t, nil)
	h.act.SetEndpoints(key("m-1"), []fleet.Endpoint{backend(t, "r", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(r.Header.Get("Content-Type")))
	})})
	_, body := post(t, h.srv.URL, `{"model":"m"}`, "Content-Type", "application/x-www-form-urlencoded") // curl -d
	require.Equal(t, "application/json", string(body))
}

// A request naming a LoRA adapter of a service goes to that service with the
// body unchanged (the engine resolves the adapter); /v1/models lists it with
// its parent; an adapter name cannot belong to two services.
func TestLoRAAdapterRouting(t *testing.T) {
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	svc := ServiceConfig{Namespace: "default", Name: "svc", Model: "m", LoRAAdapters: []string{"sql"},
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "m-1"}}}
	require.NoError(t, act.SetServices([]ServiceConfig{svc}))
	act.SetEndpoints(svc.Key("m-1"), []fleet.Endpoint{okBackend(t, "r1")})
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)

	resp, body := post(t, srv.URL, `{"model":"sql","messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.Contains(t, string(body), `"got":{"model":"sql"`)

	resp, err = http.Get(srv.URL + PathModels)
	require.NoError(t, err)
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID     string `json:"id"`
			Parent string `json:"parent"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
	require.Len(t, list.Data, 2)
	require.Equal(t, "m", list.Data[0].ID)
	require.Equal(t, "sql", list.Data[1].ID)
	require.Equal(t, "m", list.Data[1].Parent)

	other := ServiceConfig{Namespace: "default", Name: "other", Model: "o", LoRAAdapters: []string{"sql"},
		Traffic: []traffic.Target{{Revision: "o-1", Percent: 100}}, Revisions: []RevisionConfig{{Name: "o-1"}}}
	require.ErrorContains(t, act.SetServices([]ServiceConfig{svc, other}), `LoRA adapter "sql" is served by another service`)
}
