package activator

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
)

// A plugin's I/O runs before the decision, without the revision lock: the
// oracle asks every pod while the lock is free, and the decision then goes
// to the pod whose engine holds the prompt.
func TestOracleAsksThePodsOutsideTheRevisionLock(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r := newRevision(context.Background(), fleet.Key{Namespace: "d", Service: "s", Revision: "r"}, log, nil, nil,
		outlierConfigOf(DefaultConfig(), time.Now))
	var asked, underLock atomic.Int32
	pod := func(cached int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			asked.Add(1)
			if r.mu.TryLock() {
				r.mu.Unlock()
			} else {
				underLock.Add(1)
			}
			fmt.Fprintf(w, `{"prompt_tokens":100,"cached_tokens":%d}`, cached)
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	r.configure(0, scheduler.Oracle, func() *scheduler.Profile {
		prof, err := scheduler.DefaultRegistry().Build([]v1alpha1.RoutingPlugin{{Name: scheduler.Oracle, Weight: 1}},
			&scheduler.Env{Index: r.index, Log: log})
		require.NoError(t, err)
		return prof
	})
	r.setEndpoints([]fleet.Endpoint{{Name: "a", Address: pod(0)}, {Name: "b", Address: pod(90)}, {Name: "c", Address: pod(10)}})

	body, err := openai.Parse([]byte(`{"model":"m","messages":[{"role":"user","content":"a prompt the pods hold"}]}`))
	require.NoError(t, err)
	req := &scheduler.Request{Body: body, API: scheduler.APIChat}
	p, err := r.acquire(context.Background(), req, nil, 10, time.Second)
	require.NoError(t, err)
	require.Equal(t, "b", p.Name)
	r.release(p, outcomeNone, "")
	require.EqualValues(t, 3, asked.Load())
	require.Zero(t, underLock.Load(), "a pod was asked while the revision lock was held")

	p = r.tryAcquire(context.Background(), req, map[string]bool{"b": true}) // the prefill path
	require.NotNil(t, p)
	require.Equal(t, "c", p.Name)
	r.release(p, outcomeNone, "")
	require.EqualValues(t, 5, asked.Load(), "only the pods not tried were asked")
	require.Zero(t, underLock.Load(), "a pod was asked while the revision lock was held")
}
