package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeProber answers with ok and counts the probes.
type fakeProber struct {
	ok     bool
	probes int
}

func (f *fakeProber) Probe(context.Context) bool { f.probes++; return f.ok }

// fakeWarmer records whether readiness was already reported when it ran.
type fakeWarmer struct {
	s          *State
	warms      int
	readyAtRun bool
}

func (f *fakeWarmer) Warm(context.Context) { f.warms++; f.readyAtRun = f.s.Ready() }

func readyCode(s *State) (int, string) {
	rec := httptest.NewRecorder()
	s.ServeReady(rec, httptest.NewRequest(http.MethodGet, "/kvasir/ready", nil))
	return rec.Code, rec.Body.String()
}

func TestServeReady(t *testing.T) {
	for _, tc := range []struct {
		name       string
		engineOK   bool
		known      bool // the background probe already found the engine ready
		drain      bool
		wantCode   int
		wantBody   string
		wantProbes int
		wantWarms  int
	}{
		{name: "engine down", wantCode: http.StatusServiceUnavailable, wantBody: "engine not ready\n", wantProbes: 1},
		{name: "probed on request", engineOK: true, wantCode: http.StatusOK, wantBody: "ready\n", wantProbes: 1, wantWarms: 1},
		{name: "known ready: no probe", engineOK: true, known: true, wantCode: http.StatusOK, wantBody: "ready\n", wantProbes: 1, wantWarms: 1},
		{name: "draining: no probe", engineOK: true, drain: true, wantCode: http.StatusServiceUnavailable, wantBody: "draining\n"},
		{name: "draining while ready", engineOK: true, known: true, drain: true, wantCode: http.StatusServiceUnavailable, wantBody: "draining\n", wantProbes: 1, wantWarms: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &fakeProber{ok: tc.engineOK}
			w := &fakeWarmer{}
			s := New(p, w, nil)
			w.s = s
			if tc.known {
				s.ProbeOnce(t.Context())
			}
			if tc.drain {
				assert.True(t, s.StartDrain())
				assert.False(t, s.StartDrain(), "a second drain does not start again")
			}
			code, body := readyCode(s)
			assert.Equal(t, tc.wantCode, code)
			assert.Equal(t, tc.wantBody, body)
			assert.Equal(t, tc.wantProbes, p.probes)
			assert.Equal(t, tc.wantWarms, w.warms)
			assert.False(t, w.readyAtRun, "warmed before reporting ready")
			assert.Equal(t, tc.wantCode == http.StatusOK, s.Ready())
			assert.Equal(t, tc.drain, s.Draining())
		})
	}
}

func TestProbeOnceFollowsEngine(t *testing.T) {
	p := &fakeProber{ok: true}
	w := &fakeWarmer{}
	s := New(p, w, nil)
	w.s = s
	s.ProbeOnce(t.Context())
	assert.True(t, s.Ready())
	s.ProbeOnce(t.Context())
	assert.Equal(t, 1, w.warms, "warmed only on turning ready")

	p.ok = false
	s.ProbeOnce(t.Context())
	assert.False(t, s.Ready())
	p.ok = true
	s.ProbeOnce(t.Context())
	assert.True(t, s.Ready())
	assert.Equal(t, 2, w.warms)

	s.MarkUnready(t.Context(), "request")
	assert.False(t, s.Ready())

	// A probe cut short by stopping changes nothing.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	p.ok = true
	s.ProbeOnce(ctx)
	assert.False(t, s.Ready())
}

func waitForDrain(ctx context.Context, s *State) <-chan *httptest.ResponseRecorder {
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		rec := httptest.NewRecorder()
		s.ServeWaitForDrain(rec, httptest.NewRequest(http.MethodGet, "/kvasir/wait-for-drain", nil).WithContext(ctx))
		done <- rec
	}()
	return done
}

func TestWaitForDrainWaitsForQuietAndIdle(t *testing.T) {
	s := New(&fakeProber{}, nil, nil)
	s.Enter()
	done := waitForDrain(t.Context(), s)
	require.True(t, s.StartDrain())
	s.WaitQuiet(t.Context(), 0)
	select {
	case <-done:
		t.Fatal("wait-for-drain answered with a request running")
	default:
	}
	s.Leave()
	rec := <-done
	assert.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "drained\n", rec.Body.String())
	require.NoError(t, s.WaitIdle(t.Context()))
}

func TestWaitQuietEndsWithContext(t *testing.T) {
	s := New(&fakeProber{}, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	s.WaitQuiet(ctx, time.Hour) // returns at once: ctx is over
	rec := <-waitForDrain(t.Context(), s)
	assert.Equal(t, "drained\n", rec.Body.String())
}

func TestWaitForDrainGivesUpWithRequest(t *testing.T) {
	s := New(&fakeProber{}, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	rec := <-waitForDrain(ctx, s)
	assert.Empty(t, rec.Body.String(), "no answer before the quiet period is over")

	s.Enter()
	s.WaitQuiet(t.Context(), 0)
	rec = <-waitForDrain(ctx, s)
	assert.Empty(t, rec.Body.String(), "no answer with a request running")
	assert.ErrorIs(t, s.WaitIdle(ctx), context.Canceled)
}

func TestHTTPProber(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusOK)
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "/health", r.URL.Path)
		w.WriteHeader(int(status.Load()))
		_, _ = w.Write([]byte(strings.Repeat("x", 100)))
	}))
	defer eng.Close()
	p := &HTTPProber{Transport: http.DefaultTransport, URL: eng.URL + "/health", Timeout: time.Minute}
	assert.True(t, p.Probe(t.Context()))
	status.Store(http.StatusServiceUnavailable)
	assert.False(t, p.Probe(t.Context()))
	eng.Close()
	assert.False(t, p.Probe(t.Context()), "unreachable")
	assert.False(t, (&HTTPProber{Transport: http.DefaultTransport, URL: "::bad", Timeout: time.Minute}).Probe(t.Context()))
}
