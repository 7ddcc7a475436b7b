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
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
)

// A plugin's I/O runs before the decision, without the revision lock: the
// oracle asks every pod while the lock is free, and the decision then goes
// to the pod whose engine holds the prompt.
//
// Each fake pod answers only once the test itself has taken r.mu. The
// caller waits for the pods' answers (the oracle's timeout is far longer
// than the test's wait), so a caller that held the lock across the oracle
// call would keep the test from ever taking it: the pod gives up after
// lockWait and counts the call as made under the lock. Other holders of the
// lock (another pod's handler, a decision after the call) only delay the
// test's Lock; they cannot fail it.
func TestOracleAsksThePodsOutsideTheRevisionLock(t *testing.T) {
	const lockWait = 10 * time.Second // generous: the lock is free within microseconds when not held across the call
	log := slog.New(slog.DiscardHandler)
	r := newRevision(context.Background(), fleet.Key{Namespace: "d", Service: "s", Revision: "r"}, log, nil, nil,
		outlierConfigOf(DefaultConfig(), time.Now))
	var asked, heldAcross atomic.Int32
	pod := func(cached int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			asked.Add(1)
			locked := make(chan struct{})
			go func() { // ends once the lock is free, at the latest when the caller's call returns
				r.mu.Lock()
				close(locked)
				r.mu.Unlock()
			}()
			wait := time.NewTimer(lockWait)
			defer wait.Stop()
			select {
			case <-locked:
			case <-wait.C:
				heldAcross.Add(1)
			}
			fmt.Fprintf(w, `{"prompt_tokens":100,"cached_tokens":%d}`, cached)
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	r.configure(0, scheduler.Oracle, func() *scheduler.Profile {
		// The oracle waits for every answer: a pod never times out before the test's lockWait.
		prof, err := scheduler.DefaultRegistry().Build([]v1alpha1.RoutingPlugin{{Name: scheduler.Oracle, Weight: 1,
			Config: &runtime.RawExtension{Raw: []byte(`{"timeout":"1m"}`)}}},
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
	require.Zero(t, heldAcross.Load(), "acquire asked a pod while holding the revision lock")
	require.Equal(t, "b", p.Name)
	r.release(p, outcomeNone, "")
	require.EqualValues(t, 3, asked.Load())

	p = r.tryAcquire(context.Background(), req, map[string]bool{"b": true}) // the prefill path
	require.Zero(t, heldAcross.Load(), "tryAcquire asked a pod while holding the revision lock")
	require.NotNil(t, p)
	require.Equal(t, "c", p.Name)
	r.release(p, outcomeNone, "")
	require.EqualValues(t, 5, asked.Load(), "only the pods not tried were asked")
}
