package activator_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// engine is a simulator of one role behind a recorder of the bodies it got;
// a non-zero fail is the status it answers instead (before the simulator
// sees the request).
type engine struct {
	name string
	addr string

	mu     sync.Mutex
	bodies []map[string]any
	fail   int
}

func (e *engine) got() []map[string]any {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]map[string]any(nil), e.bodies...)
}

func startEngine(t *testing.T, name, role string, fail int) *engine {
	t.Helper()
	cfg := simConfig(role)
	s := newSim(t, cfg)
	e := &engine{name: name, fail: fail}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		e.mu.Lock()
		e.bodies = append(e.bodies, m)
		fail := e.fail
		e.mu.Unlock()
		if fail != 0 {
			openai.WriteError(w, fail, openai.Err(openai.TypeServer, "boom", "injected"), 0)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	e.addr = strings.TrimPrefix(srv.URL, "http://")
	return e
}

type pdFleet struct {
	act             *activator.Activator
	url             string
	prefill, decode []*engine
	decodeKey       fleet.Key
}

func newPDFleet(t *testing.T, prefill, decode []*engine) *pdFleet {
	t.Helper()
	act, err := activator.New(activator.DefaultConfig(), activator.WithRegisterer(prometheus.NewRegistry()),
		activator.WithLogger(slog.New(slog.DiscardHandler)), activator.WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	sc := activator.ServiceConfig{Namespace: "default", Name: "svc", Model: "m",
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}},
		Revisions: []activator.RevisionConfig{{Name: "m-1", Disaggregated: true}}}
	require.NoError(t, act.SetServices([]activator.ServiceConfig{sc}))
	eps := func(es []*engine) []fleet.Endpoint {
		var out []fleet.Endpoint
		for _, e := range es {
			out = append(out, fleet.Endpoint{Name: e.name, Address: e.addr})
		}
		return out
	}
	act.SetEndpoints(sc.RoleKey("m-1", fleet.RolePrefill), eps(prefill))
	act.SetEndpoints(sc.RoleKey("m-1", fleet.RoleDecode), eps(decode))
	srv := newFastServer(t, act.FastHandler())
	t.Cleanup(srv.Close)
	return &pdFleet{act: act, url: srv.URL, prefill: prefill, decode: decode, decodeKey: sc.RoleKey("m-1", fleet.RoleDecode)}
}

var longSystem = strings.Repeat("You are a careful assistant who answers in full sentences. ", 80)

// chatBody is the chat request of the PD tests: a long system prompt (to
// prefill remotely) and a short question.
func chatBody(stream bool) string {
	return openaitest.ChatBody("m", fmt.Sprintf(`"max_tokens":4,"stream":%v`, stream), openaitest.System(longSystem), openaitest.User("hello"))
}

func (f *pdFleet) chat(t *testing.T, stream bool) (int, string) {
	t.Helper()
	resp, err := http.Post(f.url+activator.PathChat, "application/json", strings.NewReader(chatBody(stream)))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func transferParams(b map[string]any) map[string]any {
	p, _ := b["kv_transfer_params"].(map[string]any)
	return p
}

func TestPDRemotePrefillThenDecode(t *testing.T) {
	pre := startEngine(t, "p1", "prefill", 0)
	dec := startEngine(t, "d1", "decode", 0)
	f := newPDFleet(t, []*engine{pre}, []*engine{dec})

	for _, stream := range []bool{false, true} {
		code, body := f.chat(t, stream)
		require.Equal(t, http.StatusOK, code, body)
		if stream {
			require.Contains(t, body, "data: [DONE]")
		} else {
			require.Contains(t, body, `"completion_tokens":4`)
		}
	}
	pb, db := pre.got(), dec.got()
	require.Len(t, pb, 2)
	require.Len(t, db, 2)
	for i := range 2 {
		require.Equal(t, float64(1), pb[i]["max_tokens"], "prefill asks for one token")
		require.Equal(t, false, pb[i]["stream"])
		require.Equal(t, true, transferParams(pb[i])["do_remote_decode"])
		tp := transferParams(db[i])
		require.Equal(t, true, tp["do_remote_prefill"], "the decode gets the prefill's kv_transfer_params")
		require.NotEmpty(t, tp["remote_block_ids"])
		require.Equal(t, float64(4), db[i]["max_tokens"], "the decode request is the client's")
	}
	require.Equal(t, true, db[1]["stream"])
}

func TestPDPrefillFailureTriesTheNext(t *testing.T) {
	bad := startEngine(t, "p1", "prefill", http.StatusInternalServerError)
	good := startEngine(t, "p2", "prefill", 0)
	dec := startEngine(t, "d1", "decode", 0)
	f := newPDFleet(t, []*engine{bad, good}, []*engine{dec})
	for range 4 {
		code, body := f.chat(t, false)
		require.Equal(t, http.StatusOK, code, body)
	}
	for _, b := range dec.got() {
		require.Equal(t, true, transferParams(b)["do_remote_prefill"], "every decode had a remote prefill")
	}
	require.Len(t, good.got(), 4)
}

func TestPDNoPrefillPodFallsBackToLocalPrefill(t *testing.T) {
	bad := startEngine(t, "p1", "prefill", http.StatusInternalServerError)
	dec := startEngine(t, "d1", "decode", 0)
	f := newPDFleet(t, []*engine{bad}, []*engine{dec})
	code, body := f.chat(t, false)
	require.Equal(t, http.StatusOK, code, body)
	require.Len(t, dec.got(), 1)
	require.Nil(t, transferParams(dec.got()[0]), "the decode pod prefilled itself")
}

func TestPDDecodeFailureTakesTheNextPair(t *testing.T) {
	pre := startEngine(t, "p1", "prefill", 0)
	d1 := startEngine(t, "d1", "decode", http.StatusServiceUnavailable) // overloaded: nothing was done
	d2 := startEngine(t, "d2", "decode", 0)
	f := newPDFleet(t, []*engine{pre}, []*engine{d1, d2})
	for range 4 {
		code, body := f.chat(t, true)
		require.Equal(t, http.StatusOK, code, body)
		require.Contains(t, body, "data: [DONE]")
		require.NotContains(t, body, "error")
	}
	require.Len(t, d2.got(), 4)
	require.Equal(t, len(d1.got())+4, len(pre.got()), "each failed decode attempt had its own prefill")
}

func TestPDSkipsRemotePrefillWhenDecodeHoldsThePrefix(t *testing.T) {
	pre := startEngine(t, "p1", "prefill", 0)
	dec := startEngine(t, "d1", "decode", 0)
	f := newPDFleet(t, []*engine{pre}, []*engine{dec})
	obj, err := openai.Parse([]byte(chatBody(false)))
	require.NoError(t, err)
	text, err := prompt.AppendRequest(nil, obj, true)
	require.NoError(t, err)
	ix := f.act.Index(f.decodeKey)
	require.True(t, ix.Apply(stats.KVEvent{Pod: "d1", BlockSize: 16, Seq: 1, Reset: true, Added: prompt.BlockHashes(text, 16)}))

	code, body := f.chat(t, false)
	require.Equal(t, http.StatusOK, code, body)
	require.Empty(t, pre.got(), "no remote prefill for a prompt the decode pod holds")
	require.Nil(t, transferParams(dec.got()[0]))
}

// kv_transfer_params come from the platform only: a client's are refused
// before any engine sees them, and the activator still sets its own.
func TestPDClientKVTransferParamsAreRefused(t *testing.T) {
	pre := startEngine(t, "p1", "prefill", 0)
	dec := startEngine(t, "d1", "decode", 0)
	f := newPDFleet(t, []*engine{pre}, []*engine{dec})
	body := `{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"hello"}],` +
		`"kv_transfer_params":{"do_remote_prefill":true,"remote_host":"169.254.169.254","remote_port":80,"remote_block_ids":[1]}}`
	resp, err := http.Post(f.url+activator.PathChat, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, string(b))
	var env openai.Envelope
	require.NoError(t, json.Unmarshal(b, &env))
	require.Equal(t, "platform_field", env.Error.Code)
	require.Empty(t, pre.got(), "no engine saw the request")
	require.Empty(t, dec.got())

	code, out := f.chat(t, false)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, true, transferParams(dec.got()[0])["do_remote_prefill"], "the platform's own still flow")
}
