package activator

import (
	"bufio"
	"bytes"
	"context"
	"errors"
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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// The prefill and tokenization requests of the data path go through the
// activator's connection pools and fasthttp's wire types (send), as the
// forwarded request does: these tests hold them to it.

// qpSeen is one request a fake queue-proxy got.
type qpSeen struct {
	path   string
	header http.Header
	body   []byte
}

// fakeQP is a queue-proxy that records what it is sent and counts the
// connections it accepted. By default it answers /tokenize with tokens, a
// prefill request (kv_transfer_params.do_remote_decode) with
// kv_transfer_params, and anything else with its name; handle, when set,
// answers instead.
type fakeQP struct {
	name   string
	addr   string
	conns  atomic.Int32
	handle func(w http.ResponseWriter, r *http.Request, body []byte)

	mu   sync.Mutex
	seen []qpSeen
}

const prefillAnswer = `{"id":"p","choices":[],"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1],"remote_host":"h","remote_port":1}}`

func startQP(t *testing.T, name string, handle func(w http.ResponseWriter, r *http.Request, body []byte)) *fakeQP {
	t.Helper()
	q := &fakeQP{name: name, handle: handle}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		q.mu.Lock()
		q.seen = append(q.seen, qpSeen{path: r.URL.Path, header: r.Header.Clone(), body: body})
		q.mu.Unlock()
		if q.handle != nil {
			q.handle(w, r, body)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/tokenize":
			_, _ = io.WriteString(w, `{"count":3,"tokens":[11,12,13],"max_model_len":8192}`)
		case bytes.Contains(body, []byte(`"do_remote_decode"`)):
			_, _ = io.WriteString(w, prefillAnswer)
		default:
			fmt.Fprintf(w, `{"served_by":%q}`, name)
		}
	}))
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			q.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	q.addr = strings.TrimPrefix(s.URL, "http://")
	return q
}

func (q *fakeQP) got() []qpSeen {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]qpSeen(nil), q.seen...)
}

func (q *fakeQP) endpoint() fleet.Endpoint { return fleet.Endpoint{Name: q.name, Address: q.addr} }

// dataRig is an activator serving model m from revision m-1,
// disaggregated when it has prefill pods, with the engine's tokenizer
// (/tokenize) when tokenizer is set (asked of a decode pod when there are
// two), and with authRig's tenants when tenants is set.
type dataRig struct {
	act *Activator
	url string
	key fleet.Key // of the decode (or only) role
}

func newDataRig(t *testing.T, prefill, decode []*fakeQP, tokenizer, tenants bool) *dataRig {
	t.Helper()
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	rc := RevisionConfig{Name: "m-1", Disaggregated: len(prefill) > 0}
	if tokenizer {
		rc.Tokenizer = v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine, Path: "/tokenize"}
	}
	sc := ServiceConfig{Namespace: "default", Name: "svc", Model: "m",
		Traffic: []traffic.Target{{Revision: "m-1", Percent: 100}}, Revisions: []RevisionConfig{rc}}
	require.NoError(t, act.SetServices([]ServiceConfig{sc}))
	if tenants {
		require.NoError(t, act.SetTenants(authTenants()))
	}
	eps := func(qs []*fakeQP) []fleet.Endpoint {
		var out []fleet.Endpoint
		for _, q := range qs {
			out = append(out, q.endpoint())
		}
		return out
	}
	k := sc.Key("m-1")
	if rc.Disaggregated {
		act.SetEndpoints(sc.RoleKey("m-1", fleet.RolePrefill), eps(prefill))
		k = sc.RoleKey("m-1", fleet.RoleDecode)
	}
	act.SetEndpoints(k, eps(decode))
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)
	return &dataRig{act: act, url: srv.URL, key: k}
}

const dataChat = `{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"hello"}]}`

// count is kvasir_activator_pd_requests_total for outcome.
func (r *dataRig) pd(outcome string) float64 {
	return testutil.ToFloat64(r.act.metrics.pd.WithLabelValues("default", "svc", "m-1", outcome))
}

// served is kvasir_activator_requests_total for a status other than 200.
func (r *dataRig) served(code int) float64 {
	return testutil.ToFloat64(r.act.metrics.requests.WithLabelValues("default", "svc", "m-1", fmt.Sprint(code)))
}

// chatRequest is a parsed chat request, as route makes it.
func chatRequest(t *testing.T) routed {
	t.Helper()
	obj, err := openai.Parse([]byte(dataChat))
	require.NoError(t, err)
	return routed{body: []byte(dataChat), req: &scheduler.Request{Body: obj, API: scheduler.APIChat}}
}

func newTestActivator(t *testing.T) *Activator {
	t.Helper()
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	return act
}

// Prefill and tokenization requests take their connections from the
// activator's pools: two requests in a row to one queue-proxy use one
// connection.
func TestPrefillAndTokenizeReusePooledConnections(t *testing.T) {
	t.Run("through the activator", func(t *testing.T) {
		pre := startQP(t, "p1", nil)
		dec := startQP(t, "d1", nil)
		r := newDataRig(t, []*fakeQP{pre}, []*fakeQP{dec}, false, false)
		for range 2 {
			resp, out := post(t, r.url, dataChat)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
			require.Contains(t, string(out), `"served_by":"d1"`)
		}
		require.Len(t, pre.got(), 2)
		require.Equal(t, int32(1), pre.conns.Load(), "the second prefill reused the first one's connection")
		require.Equal(t, 2.0, r.pd(pdRemote))
		for _, s := range dec.got() {
			require.Contains(t, string(s.body), `"do_remote_prefill":true`, "the decode got the prefill's kv_transfer_params")
		}
	})
	rt := chatRequest(t)
	for _, tc := range []struct {
		name string
		call func(a *Activator, addr string) error
	}{
		{"prefill", func(a *Activator, addr string) error {
			params, o, err := a.prefill(context.Background(), podAt(addr), PathChat, nil,
				prefillRequest(rt.req.Body), time.Minute, nil)
			if err == nil && (o != outcomeSuccess || !bytes.Contains(params, []byte("do_remote_prefill"))) {
				return fmt.Errorf("prefill gave %s, %v", params, o)
			}
			return err
		}},
		{"tokenize", func(a *Activator, addr string) error {
			toks, err := a.engineTokens(context.Background(), addr, rt, "m", "/tokenize", nil)
			if err == nil && len(toks) != 3 {
				return fmt.Errorf("tokens %v", toks)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := startQP(t, "q", nil)
			a := newTestActivator(t)
			for range 2 {
				require.NoError(t, tc.call(a, q.addr))
			}
			require.Len(t, q.got(), 2)
			require.Equal(t, int32(1), q.conns.Load(), "one connection for both")
		})
	}
	// One pool per address for the whole data path: a tokenization, a
	// prefill and a forwarded request to one queue-proxy, in a row, take
	// the same connection.
	t.Run("one pool for the data path", func(t *testing.T) {
		q := startQP(t, "q", nil)
		a := newTestActivator(t)
		_, err := a.engineTokens(context.Background(), q.addr, rt, "m", "/tokenize", nil)
		require.NoError(t, err)
		_, _, err = a.prefill(context.Background(), podAt(q.addr), PathChat, nil, prefillRequest(rt.req.Body), time.Minute, nil)
		require.NoError(t, err)
		u, err := a.send(context.Background(), q.addr, PathChat, nil, rt.body, time.Now().Add(time.Minute), nil)
		require.NoError(t, err)
		out, err := u.readAll(1 << 10)
		require.NoError(t, err)
		u.finish(true)
		require.JSONEq(t, `{"served_by":"q"}`, string(out))
		require.Len(t, q.got(), 3)
		require.Equal(t, int32(1), q.conns.Load())
	})
}

// padded returns a JSON object of exactly n bytes: fields (a JSON object's
// members, without the braces) and a padding string.
func padded(t *testing.T, fields string, n int) []byte {
	t.Helper()
	head := `{` + fields + `,"pad":"`
	pad := n - len(head) - len(`"}`)
	require.Positive(t, pad)
	return []byte(head + strings.Repeat("x", pad) + `"}`)
}

// A prefill answer over maxPrefillReply is refused: the decode pod
// prefills, and the connection that held the rest of it is not reused. One
// of exactly maxPrefillReply bytes is taken.
func TestOversizedPrefillAnswerIsRefused(t *testing.T) {
	params := `"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1]}`
	for _, tc := range []struct {
		name     string
		size     int
		outcome  string
		transfer bool
		conns    int32
	}{
		{"at the bound", maxPrefillReply, pdRemote, true, 1},
		{"over the bound", maxPrefillReply + 1, pdFallback, false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer := padded(t, params, tc.size)
			pre := startQP(t, "p1", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(answer)
			})
			dec := startQP(t, "d1", nil)
			r := newDataRig(t, []*fakeQP{pre}, []*fakeQP{dec}, false, false)
			for range 2 {
				resp, out := post(t, r.url, dataChat)
				require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
			}
			require.Equal(t, 2.0, r.pd(tc.outcome))
			for _, s := range dec.got() {
				require.Equal(t, tc.transfer, bytes.Contains(s.body, []byte("do_remote_prefill")), string(s.body))
			}
			require.Equal(t, tc.conns, pre.conns.Load())
		})
	}
	t.Run("error answer over the bound", func(t *testing.T) {
		q := startQP(t, "p", func(w http.ResponseWriter, _ *http.Request, _ []byte) {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write(bytes.Repeat([]byte("e"), maxPrefillReply+1<<10))
		})
		a := newTestActivator(t)
		_, o, err := a.prefill(context.Background(), podAt(q.addr), PathChat, nil, []byte(`{}`), time.Minute, nil)
		require.ErrorContains(t, err, "prefill answered 400: eee")
		require.Less(t, len(err.Error()), 300, "the error quotes the answer's start only")
		require.Equal(t, outcomeSuccess, o, "it answered")
	})
}

// A tokenization answer over maxTokenizeReply is refused: the request is
// routed on its text, and counted in kvasir_activator_tokenize_errors_total.
func TestOversizedTokenizeAnswerIsRefused(t *testing.T) {
	answer := padded(t, `"tokens":[1,2,3]`, maxTokenizeReply+1)
	huge := func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if r.URL.Path == "/tokenize" {
			_, _ = w.Write(answer)
			return
		}
		_, _ = io.WriteString(w, `{"served":true}`)
	}
	d1, d2 := startQP(t, "d1", huge), startQP(t, "d2", huge)
	r := newDataRig(t, nil, []*fakeQP{d1, d2}, true, false)
	resp, out := post(t, r.url, dataChat)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
	require.Equal(t, 1.0, testutil.ToFloat64(r.act.metrics.tokenizeErrors))

	_, err := r.act.engineTokens(context.Background(), d1.addr, chatRequest(t), "m", "/tokenize", nil)
	require.Error(t, err)
	// Scanning 16 MiB under -race takes about 0.9 s here; a loaded machine
	// may spend the 2 s budget first, which refuses the answer too.
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, "cut at the bound")
	}
}

// A client that leaves while its prefill or tokenization waits on a slow
// queue-proxy cancels it: the queue-proxy sees its connection closed within
// a second (the tokenization's own budget is 2 s, the prefill's the
// request timeout), and the request goes no further.
func TestClientLeavingCancelsPrefillAndTokenize(t *testing.T) {
	for _, tc := range []struct {
		name      string
		tokenizer bool
	}{
		{"prefill", false},
		{"tokenize", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked := make(chan struct{}, 4)
			closed := make(chan time.Time, 4)
			slow := func(w http.ResponseWriter, r *http.Request, body []byte) {
				if r.URL.Path == "/tokenize" || bytes.Contains(body, []byte(`"do_remote_decode"`)) {
					asked <- struct{}{}
					<-r.Context().Done() // the connection closed
					closed <- time.Now()
					return
				}
				_, _ = io.WriteString(w, `{"served":true}`)
			}
			var r *dataRig
			var decode []*fakeQP
			if tc.tokenizer {
				decode = []*fakeQP{startQP(t, "d1", slow), startQP(t, "d2", slow)}
				r = newDataRig(t, nil, decode, true, false)
			} else {
				decode = []*fakeQP{startQP(t, "d1", nil)}
				r = newDataRig(t, []*fakeQP{startQP(t, "p1", slow)}, decode, false, false)
			}
			c, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
			require.NoError(t, err)
			_, err = fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
				PathChat, len(dataChat), dataChat)
			require.NoError(t, err)
			<-asked
			left := time.Now()
			require.NoError(t, c.Close())
			select {
			case at := <-closed:
				require.Less(t, at.Sub(left), time.Second)
			case <-time.After(5 * time.Second):
				t.Fatal("the queue-proxy's request was not cancelled")
			}
			require.Eventually(t, func() bool { return r.served(499) == 1 }, 5*time.Second, 10*time.Millisecond,
				"the request ends as its client left")
			for _, q := range decode {
				for _, s := range q.got() {
					require.Equal(t, "/tokenize", s.path, "nothing was forwarded for a client gone")
				}
			}
		})
	}
	// A WebSocket's request has no Watcher: its context's end closes the
	// connection.
	t.Run("prefill on a context", func(t *testing.T) {
		asked := make(chan struct{}, 1)
		closed := make(chan time.Time, 1)
		q := startQP(t, "p", func(_ http.ResponseWriter, r *http.Request, _ []byte) {
			asked <- struct{}{}
			<-r.Context().Done()
			closed <- time.Now()
		})
		a := newTestActivator(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, _, err := a.prefill(ctx, podAt(q.addr), PathChat, nil, []byte(`{}`), time.Minute, nil)
			done <- err
		}()
		<-asked
		left := time.Now()
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
		select {
		case at := <-closed:
			require.Less(t, at.Sub(left), time.Second)
		case <-time.After(5 * time.Second):
			t.Fatal("the queue-proxy's request was not cancelled")
		}
	})
}

// With tenants, no key header of the client's reaches a queue-proxy by the
// prefill, the tokenization or the decode; the prefill carries the
// client's other end-to-end headers as the decode does, the tokenization
// none of them. Forged framing and hop-by-hop headers stay out too.
func TestKeyHeadersNeverReachTheEngines(t *testing.T) {
	pre := startQP(t, "p1", nil)
	d1, d2 := startQP(t, "d1", nil), startQP(t, "d2", nil)
	r := newDataRig(t, []*fakeQP{pre}, []*fakeQP{d1, d2}, true, true)
	for _, auth := range [][2]string{bearer(authKeys[0]), apiKey(authKeys[0]), {"Authorization", "bearer " + authKeys[0]}} {
		resp, out := post(t, r.url, dataChat, auth[0], auth[1], "X-Custom", "kept",
			"Connection", "X-Hop", "X-Hop", "dropped", "Proxy-Authorization", "Basic Zm9vOmJhcg==")
		require.Equal(t, http.StatusOK, resp.StatusCode, string(out))
	}
	require.Len(t, pre.got(), 3)
	var all []qpSeen
	for _, q := range []*fakeQP{pre, d1, d2} {
		all = append(all, q.got()...)
	}
	require.Len(t, all, 9, "a tokenization, a prefill and a decode per request")
	kinds := map[string]int{}
	for _, s := range all {
		kind := "decode"
		switch {
		case s.path == "/tokenize":
			kind = "tokenize"
		case bytes.Contains(s.body, []byte(`"do_remote_decode"`)):
			kind = "prefill"
		}
		kinds[kind]++
		for k, vv := range s.header {
			for _, key := range authKeys {
				require.NotContains(t, strings.Join(vv, ","), key, "%s header %s", kind, k)
			}
		}
		for _, h := range []string{"Authorization", APIKeyHeader, "X-Hop", "Proxy-Authorization"} {
			require.Empty(t, s.header.Values(h), "%s got %s", kind, h)
		}
		require.Equal(t, "application/json", s.header.Get("Content-Type"), kind)
		if kind == "tokenize" {
			require.Empty(t, s.header.Values("X-Custom"), "a tokenization carries no header of the client's")
		} else {
			require.Equal(t, "kept", s.header.Get("X-Custom"), kind)
		}
	}
	require.Equal(t, map[string]int{"tokenize": 3, "prefill": 3, "decode": 3}, kinds)
}

// A prefill or tokenization answer that is not HTTP, or that switches
// protocols, fails the call (the decode pod prefills; the request is
// routed on its text) and its connection is not reused.
func TestMalformedPrefillAndTokenizeAnswers(t *testing.T) {
	rt := chatRequest(t)
	for _, tc := range []struct {
		name, raw string
		// hangUp: the server closes the connection after the answer (else
		// it waits for the next request on it).
		hangUp bool
	}{
		{"garbage", "SSH-2.0-OpenSSH\r\n\r\n", false},
		{"switching protocols", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", false},
		{"broken chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false},
		{"huge head", "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 64<<10) + "\r\n\r\n", false},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"tokens\":[1,", true},
		{"no answer", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, accepted := rawServer(t, tc.raw, tc.hangUp)
			a := newTestActivator(t)
			_, o, err := a.prefill(context.Background(), podAt(addr), PathChat, nil, []byte(`{}`), 5*time.Second, nil)
			require.Error(t, err)
			require.Equal(t, outcomeFailure, o)
			_, err = a.engineTokens(context.Background(), addr, rt, "m", "/tokenize", nil)
			require.Error(t, err)
			require.Equal(t, int32(2), accepted.Load(), "no broken connection was reused")
		})
	}
}

// rawServer answers every request it reads with raw, then closes the
// connection when hangUp is set, else once the client does (or the test
// ends); it counts the connections it accepted.
func rawServer(t *testing.T, raw string, hangUp bool) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var n atomic.Int32
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, raw); err != nil || hangUp {
						return
					}
				}
			})
		}
	})
	return ln.Addr().String(), &n
}

func podAt(addr string) *scheduler.Pod {
	return scheduler.NewPod(fleet.Endpoint{Name: "p", Address: addr})
}
