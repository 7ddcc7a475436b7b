package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeAPI is a chat completions endpoint on loopback that counts its
// requests and answers each with status (a 2xx: a stream whose last chunk
// reports 10 tokens of usage).
type fakeAPI struct {
	srv    *httptest.Server
	hits   atomic.Int64
	status int
	key    string
}

func newFakeAPI(t *testing.T, status int, key string) *fakeAPI {
	f := &fakeAPI{status: status, key: key}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		if r.URL.Path != "/v1/chat/completions" || r.Header.Get("Authorization") != "Bearer "+f.key {
			http.Error(w, "wrong request", http.StatusBadRequest)
			return
		}
		if f.status/100 != 2 {
			w.WriteHeader(f.status)
			return
		}
		w.Header().Set("x-ratelimit-remaining-tokens", "5")
		w.WriteHeader(f.status)
		fmt.Fprint(w, "data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6}}\n\ndata: [DONE]\n\n")
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func TestLoaderRoundRobin(t *testing.T) {
	const key = "sk-test"
	apis := []*fakeAPI{newFakeAPI(t, 200, key), newFakeAPI(t, 429, key), newFakeAPI(t, 503, key)}
	bases := make([]string, len(apis))
	for i, a := range apis {
		bases[i] = a.srv.URL
	}
	l := newLoader(bases, "demo", key, 16, 4, 5*time.Second)
	defer l.close()

	// Concurrent senders still spread evenly, and each record names the
	// process that answered it.
	const n = 30
	recs := make([]record, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { recs[i] = l.do(context.Background(), time.Now()) })
	}
	wg.Wait()
	want := map[int]int{0: 200, 1: 429, 2: 503}
	perProc := map[int]int{}
	for _, r := range recs {
		require.Empty(t, r.err)
		assert.Equal(t, want[r.proc], r.status, "process %d", r.proc)
		perProc[r.proc]++
	}
	assert.Equal(t, map[int]int{0: n / 3, 1: n / 3, 2: n / 3}, perProc)
	for i, a := range apis {
		assert.Equal(t, int64(n/3), a.hits.Load(), "API %d", i)
	}
	for _, r := range processRecords(recs, 0) {
		assert.True(t, r.usage && r.metered, "%+v", r)
		assert.Equal(t, int64(10), r.tokens)
	}
}

func TestLoaderOneProcess(t *testing.T) {
	api := newFakeAPI(t, 200, "k")
	l := newLoader([]string{api.srv.URL}, "demo", "k", 8, 2, 5*time.Second)
	defer l.close()
	for range 3 {
		r := l.do(context.Background(), time.Now())
		assert.Zero(t, r.proc)
		assert.Equal(t, 200, r.status)
	}
	assert.Equal(t, int64(3), api.hits.Load())
}

func TestDrainStopsAtAnyProcess429(t *testing.T) {
	// Only the second process refuses: the drain stops at its first 429.
	apis := []*fakeAPI{newFakeAPI(t, 200, "k"), newFakeAPI(t, 429, "k")}
	l := newLoader([]string{apis[0].srv.URL, apis[1].srv.URL}, "demo", "k", 8, 2, 5*time.Second)
	defer l.close()
	recs, err := l.drain(context.Background(), 4, 10*time.Second)
	require.NoError(t, err)
	_, denied := firstDenial(recs)
	assert.True(t, denied)
	assert.Positive(t, apis[1].hits.Load())
}
