package activator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fairqueue"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/stats"
	tenantkeys "github.com/kvasir-serving/kvasir/pkg/tenant"
	"github.com/kvasir-serving/kvasir/pkg/testing/promtest"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// gate is a one-slot engine the test drives: each request announces its
// "user" field on arrived, then waits for finish (or its client to leave)
// and answers with a fixed usage.
type gate struct {
	arrived chan string
	finish  chan struct{}
}

func gatedBackend(t *testing.T, name string) (fleet.Endpoint, *gate) {
	g := &gate{arrived: make(chan string, 64), finish: make(chan struct{})}
	return backend(t, name, func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			User string `json:"user"`
		}
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &body)
		g.arrived <- body.User
		select {
		case <-g.finish:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served_by":%q,"usage":{"prompt_tokens":20,"completion_tokens":30,"total_tokens":50}}`, name)
	}), g
}

// next lets the request on the engine finish and returns the user of the
// one that gets the slot after it.
func (g *gate) next(t *testing.T) string {
	t.Helper()
	g.finish <- struct{}{}
	return g.first(t)
}

// first returns the user of the next request to reach the engine.
func (g *gate) first(t *testing.T) string {
	t.Helper()
	select {
	case u := <-g.arrived:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the engine")
		return ""
	}
}

// fairRig is an activator serving model m (revision m-1, one pod of
// containerConcurrency 1 behind a gate) to tenants of the given
// priorities and weights, each with key "sk-"+name.
type fairRig struct {
	act  *Activator
	reg  *prometheus.Registry
	url  string
	gate *gate
}

type tenantSpec struct {
	name     string
	priority v1alpha1.TenantPriority
	weight   int32
}

func newFairRig(t *testing.T, mutate func(*Config), tenants ...tenantSpec) *fairRig {
	t.Helper()
	return newFairRigCap(t, 1, mutate, tenants...)
}

// newFairRigCap is newFairRig with a pod of containerConcurrency cc.
func newFairRigCap(t *testing.T, cc int, mutate func(*Config), tenants ...tenantSpec) *fairRig {
	t.Helper()
	cfg := DefaultConfig()
	cfg.BufferTimeout = time.Minute // a failing test fails within it
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	act, err := New(cfg, WithRegisterer(reg), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(act.Close)
	require.NoError(t, act.SetServices([]ServiceConfig{{Namespace: "default", Name: "svc", Model: "m",
		Traffic:   []traffic.Target{{Revision: "m-1", Percent: 100}},
		Revisions: []RevisionConfig{{Name: "m-1", ContainerConcurrency: cc}}}}))
	var tcs []TenantConfig
	for _, tn := range tenants {
		tcs = append(tcs, TenantConfig{Namespace: "default", Name: tn.name, Keys: [][32]byte{tenantkeys.Digest("sk-" + tn.name)},
			Priority: tn.priority, Weight: tn.weight, Models: []string{"*"}})
	}
	require.NoError(t, act.SetTenants(tcs))
	ep, g := gatedBackend(t, "pod")
	act.SetEndpoints(key("m-1"), []fleet.Endpoint{ep})
	srv := newFastServer(t, act.FastHandler()).URL
	return &fairRig{act: act, reg: reg, url: srv, gate: g}
}

func newTestServer(t *testing.T, h http.Handler) string {
	t.Helper()
	s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { s.Close() })
	return "http://" + ln.Addr().String()
}

// answer is what a client got.
type answer struct {
	code       int
	body       []byte
	retryAfter string
}

// send posts a chat request of tenant (none: no key) with user and returns
// where its answer will arrive.
func (r *fairRig) send(t *testing.T, ctx context.Context, tenant, user string) <-chan answer {
	t.Helper()
	out := make(chan answer, 1)
	body := fmt.Sprintf(`{"model":"m","user":%q,"max_tokens":30,"messages":[{"role":"user","content":"the same prompt"}]}`, user)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url+PathChat, strings.NewReader(body))
	require.NoError(t, err)
	if tenant != "" {
		req.Header.Set("Authorization", "Bearer sk-"+tenant)
	}
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- answer{code: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		out <- answer{code: resp.StatusCode, body: b, retryAfter: resp.Header.Get("Retry-After")}
	}()
	return out
}

// waitBuffered waits until n requests wait for revision m-1.
func (r *fairRig) waitBuffered(t *testing.T, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		l, _ := r.act.Load(key("m-1"))
		return l.Buffered == n
	}, 10*time.Second, time.Millisecond, "want %d buffered", n)
}

// queue holds the pod with holder's request, then queues the requests of
// arrivals (tenant, user) one after the other, each waiting before the
// next arrives.
func (r *fairRig) queue(t *testing.T, holder [2]string, arrivals ...[2]string) map[string]<-chan answer {
	t.Helper()
	answers := map[string]<-chan answer{holder[1]: r.send(t, context.Background(), holder[0], holder[1])}
	require.Equal(t, holder[1], r.gate.first(t))
	for i, a := range arrivals {
		answers[a[1]] = r.send(t, context.Background(), a[0], a[1])
		r.waitBuffered(t, i+1)
	}
	return answers
}

// releaseAll lets n queued requests through one at a time and returns the
// order in which they reached the engine; the last one is let finish too.
func (r *fairRig) releaseAll(t *testing.T, n int) []string {
	t.Helper()
	var order []string
	for range n {
		order = append(order, r.gate.next(t))
	}
	r.gate.finish <- struct{}{}
	return order
}

func arrivals(tenant string, n int) [][2]string {
	var out [][2]string
	for i := range n {
		out = append(out, [2]string{tenant, fmt.Sprintf("%s-%d", tenant, i)})
	}
	return out
}

func tenantsOf(order []string) string {
	var b strings.Builder
	for _, u := range order {
		b.WriteByte(u[0])
	}
	return b.String()
}

// Release order when a revision is saturated, through the activator's HTTP
// API: a light tenant is not stuck behind a heavy one's backlog, weights
// split releases, classes go first to last, and the open API stays first
// in, first out.
func TestFairQueueReleaseOrder(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tenants  []tenantSpec
		arrivals [][2]string
		fcfs     bool // Config.FirstComeFirstServed
		check    func(t *testing.T, order []string)
	}{{
		name:     "a light tenant arriving after a heavy one's backlog of 8 goes before it",
		tenants:  []tenantSpec{{"heavy", "standard", 1}, {"light", "standard", 1}, {"holder", "standard", 1}},
		arrivals: append(arrivals("heavy", 8), [2]string{"light", "light-0"}),
		check: func(t *testing.T, order []string) {
			pos := strings.IndexByte(tenantsOf(order), 'l')
			require.LessOrEqual(t, pos, 1, "order %v", order)
		},
	}, {
		name:     "weights 2:1 split releases 2:1 while both are backlogged",
		tenants:  []tenantSpec{{"a", "standard", 2}, {"b", "standard", 1}, {"holder", "standard", 1}},
		arrivals: append(arrivals("a", 9), arrivals("b", 9)...),
		check: func(t *testing.T, order []string) {
			first := tenantsOf(order[:9])
			require.Equal(t, 6, strings.Count(first, "a"), "first releases %s", first)
			require.Equal(t, 3, strings.Count(first, "b"), "first releases %s", first)
		},
	}, {
		name:    "critical before standard before sheddable, each first in first out",
		tenants: []tenantSpec{{"crit", "critical", 1}, {"std", "standard", 1}, {"shed", "sheddable", 1}, {"holder", "standard", 1}},
		arrivals: [][2]string{{"shed", "shed-0"}, {"std", "std-0"}, {"crit", "crit-0"},
			{"shed", "shed-1"}, {"std", "std-1"}, {"crit", "crit-1"}},
		check: func(t *testing.T, order []string) {
			require.Equal(t, []string{"crit-0", "crit-1", "std-0", "std-1", "shed-0", "shed-1"}, order)
		},
	}, {
		name:    "fair queueing off: every tenant in one first-come line",
		tenants: []tenantSpec{{"crit", "critical", 1}, {"shed", "sheddable", 1}, {"holder", "standard", 1}},
		fcfs:    true,
		arrivals: [][2]string{{"shed", "shed-0"}, {"shed", "shed-1"}, {"crit", "crit-0"},
			{"shed", "shed-2"}, {"crit", "crit-1"}},
		check: func(t *testing.T, order []string) {
			require.Equal(t, []string{"shed-0", "shed-1", "crit-0", "shed-2", "crit-1"}, order)
		},
	}, {
		name:     "the open API is first in, first out",
		arrivals: append(arrivals("", 6), [2]string{"", "late"}),
		check: func(t *testing.T, order []string) {
			require.Equal(t, []string{"-0", "-1", "-2", "-3", "-4", "-5", "late"}, order)
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFairRig(t, func(c *Config) { c.FirstComeFirstServed = tc.fcfs }, tc.tenants...)
			holder := [2]string{"", "hold"}
			if len(tc.tenants) > 0 {
				holder[0] = "holder"
			}
			answers := r.queue(t, holder, tc.arrivals...)
			order := r.releaseAll(t, len(tc.arrivals))
			tc.check(t, order)
			for u, ch := range answers {
				require.Equal(t, http.StatusOK, (<-ch).code, u)
			}
			l, _ := r.act.Load(key("m-1"))
			require.Equal(t, Load{Ready: 1, LastActive: l.LastActive}, l, "nothing left waiting or in flight")
			waits := histogramCount(t, r.reg, "kvasir_tenant_queue_wait_seconds")
			if len(tc.tenants) == 0 {
				require.Zero(t, waits, "no per-tenant series while the API is open")
			} else {
				require.EqualValues(t, len(tc.arrivals), waits, "every wait observed once")
			}
		})
	}
}

// histogramCount is the sum of the sample counts of a histogram's series.
func histogramCount(t *testing.T, g prometheus.Gatherer, name string) uint64 {
	t.Helper()
	fams, err := g.Gather()
	require.NoError(t, err)
	var n uint64
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// Overload: with --max-buffered 2, a sheddable newcomer is refused, a
// critical or standard newcomer evicts the oldest sheddable waiter, and a
// newcomer with nothing lower to shed is refused; each is answered 429
// queue_full with Retry-After and counted by reason.
func TestFairQueueShedsLowestClassFirst(t *testing.T) {
	r := newFairRig(t, func(c *Config) { c.MaxBuffered = 2 },
		tenantSpec{"crit", "critical", 1}, tenantSpec{"std", "standard", 1}, tenantSpec{"shed", "sheddable", 1},
		tenantSpec{"holder", "standard", 1})
	answers := r.queue(t, [2]string{"holder", "hold"}, [2]string{"shed", "shed-0"}, [2]string{"shed", "shed-1"})
	refused := func(t *testing.T, a answer) {
		t.Helper()
		require.Equal(t, http.StatusTooManyRequests, a.code, string(a.body))
		require.Equal(t, "1", a.retryAfter)
		requireOpenAIError(t, a.body, "queue_full")
	}
	for _, step := range []struct {
		name          string
		tenant, user  string
		evicted       string // whose waiter is shed, "" for none
		refused       bool
		bufferedAfter int
	}{
		{name: "sheddable newcomer refused", tenant: "shed", user: "shed-2", refused: true, bufferedAfter: 2},
		{name: "critical evicts the oldest sheddable", tenant: "crit", user: "crit-0", evicted: "shed-0", bufferedAfter: 2},
		{name: "standard evicts the next sheddable", tenant: "std", user: "std-0", evicted: "shed-1", bufferedAfter: 2},
		{name: "standard refused: nothing lower to shed", tenant: "std", user: "std-1", refused: true, bufferedAfter: 2},
		{name: "critical evicts the standard waiter once no sheddable is left", tenant: "crit", user: "crit-1", evicted: "std-0", bufferedAfter: 2},
		{name: "critical refused: nothing lower to shed", tenant: "crit", user: "crit-2", refused: true, bufferedAfter: 2},
	} {
		t.Run(step.name, func(t *testing.T) {
			ch := r.send(t, context.Background(), step.tenant, step.user)
			if step.refused {
				refused(t, <-ch)
			} else {
				answers[step.user] = ch
			}
			if step.evicted != "" {
				refused(t, <-answers[step.evicted])
				delete(answers, step.evicted)
			}
			r.waitBuffered(t, step.bufferedAfter)
		})
	}
	require.Equal(t, []string{"crit-0", "crit-1"}, r.releaseAll(t, 2))
	for u, ch := range answers {
		require.Equal(t, http.StatusOK, (<-ch).code, u)
	}
	for _, c := range []struct {
		tenant, reason string
		want           float64
	}{{"shed", rejectQueueFull, 1}, {"shed", rejectShed, 2}, {"std", rejectQueueFull, 1}, {"std", rejectShed, 1},
		{"crit", rejectQueueFull, 1}, {"crit", rejectShed, 0}} {
		v, _ := promtest.Value(r.reg, "kvasir_tenant_rejected_total", map[string]string{"tenant": c.tenant, "model": "m", "reason": c.reason})
		require.Equal(t, c.want, v, "%s %s", c.tenant, c.reason)
	}
}

// The open API's refusal stays 503 queue_full, as before the fair queue.
func TestOpenAPIQueueFullStays503(t *testing.T) {
	r := newFairRig(t, func(c *Config) { c.MaxBuffered = 1 })
	r.queue(t, [2]string{"", "hold"}, [2]string{"", "w"})
	a := <-r.send(t, context.Background(), "", "x")
	require.Equal(t, http.StatusServiceUnavailable, a.code)
	requireOpenAIError(t, a.body, "queue_full")
	r.releaseAll(t, 1)
}

// A client that leaves while queued is taken out of the queue: it holds no
// place and no capacity, and the next request is served.
func TestFairQueueClientLeavesWhileQueued(t *testing.T) {
	r := newFairRig(t, nil, tenantSpec{"a", "standard", 1}, tenantSpec{"holder", "standard", 1})
	answers := r.queue(t, [2]string{"holder", "hold"})
	ctx, cancel := context.WithCancel(context.Background())
	gone := r.send(t, ctx, "a", "gone")
	r.waitBuffered(t, 1)
	cancel()
	require.Equal(t, -1, (<-gone).code)
	r.waitBuffered(t, 0)
	answers["next"] = r.send(t, context.Background(), "a", "next")
	r.waitBuffered(t, 1)
	require.Equal(t, []string{"next"}, r.releaseAll(t, 1))
	for u, ch := range answers {
		require.Equal(t, http.StatusOK, (<-ch).code, u)
	}
	require.EqualValues(t, 2, histogramCount(t, r.reg, "kvasir_tenant_queue_wait_seconds"), "the leaver's wait is observed too")
}

// testRevision is a revision with pods named as given, capacity per pod,
// and queueing q, outside any activator.
func testRevision(t *testing.T, capacity int, q queueing, pods ...string) *revision {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	r := newRevision(context.Background(), fleet.Key{Namespace: "d", Service: "s", Revision: "r"}, log, nil, nil,
		outlierConfigOf(DefaultConfig(), time.Now)).withQueueing(q)
	r.configure(capacity, "", func() *scheduler.Profile {
		prof, err := scheduler.DefaultRegistry().Build([]v1alpha1.RoutingPlugin{{Name: scheduler.LeastRequest, Weight: 1}},
			&scheduler.Env{Index: r.index, Log: log})
		require.NoError(t, err)
		return prof
	})
	var eps []fleet.Endpoint
	for _, p := range pods {
		eps = append(eps, fleet.Endpoint{Name: p, Address: "127.0.0.1:1"})
	}
	r.setEndpoints(eps)
	return r
}

type obtained struct {
	adm admitted
	err error
}

func obtainAsync(r *revision, ctx context.Context, exclude map[string]bool, tk waitTicket) <-chan obtained {
	out := make(chan obtained, 1)
	go func() {
		adm, err := r.obtain(ctx, &scheduler.Request{API: scheduler.APIChat}, exclude, tk, time.Minute)
		out <- obtained{adm, err}
	}()
	return out
}

func waitRevBuffered(t *testing.T, r *revision, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return r.load().Buffered == n }, 10*time.Second, time.Millisecond, "want %d buffered", n)
}

func got(t *testing.T, ch <-chan obtained) admitted {
	t.Helper()
	select {
	case o := <-ch:
		require.NoError(t, o.err)
		return o.adm
	case <-time.After(10 * time.Second):
		t.Fatal("no pod handed")
		return admitted{}
	}
}

var anon = waitTicket{class: fairqueue.Standard, weight: 1}

// Retries (requests that tried a pod) were admitted once: they wait apart
// and are served before the fair queue, except on a pod they tried, which
// goes to the next waiter.
func TestRetriesServedFirst(t *testing.T) {
	for _, tc := range []struct {
		name    string
		exclude string // the pod the retry tried
		freed   string // the pod that frees first
		first   string // who gets it: "retry" or "fresh"
	}{
		{name: "a retry gets a pod it has not tried before earlier fresh requests", exclude: "a", freed: "b", first: "retry"},
		{name: "a pod the retry tried goes to the fresh request", exclude: "a", freed: "a", first: "fresh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRevision(t, 1, queueingOf(DefaultConfig()), "a", "b")
			held := map[string]*scheduler.Pod{}
			for range 2 {
				adm, err := r.obtain(context.Background(), &scheduler.Request{API: scheduler.APIChat}, nil, anon, time.Minute)
				require.NoError(t, err)
				held[adm.pod.Name] = adm.pod
			}
			fresh := obtainAsync(r, context.Background(), nil, anon)
			waitRevBuffered(t, r, 1)
			retry := obtainAsync(r, context.Background(), map[string]bool{tc.exclude: true}, anon)
			waitRevBuffered(t, r, 2)
			r.release(held[tc.freed], outcomeNone, "")
			var firstCh, otherCh <-chan obtained = fresh, retry
			if tc.first == "retry" {
				firstCh, otherCh = retry, fresh
			}
			a := got(t, firstCh)
			require.Equal(t, tc.freed, a.pod.Name)
			require.Equal(t, tc.first == "fresh", a.queued, "only a fresh request waits in the fair queue")
			waitRevBuffered(t, r, 1)
			for name, p := range held {
				if name != tc.freed {
					r.release(p, outcomeNone, "")
				}
			}
			b := got(t, otherCh)
			r.release(a.pod, outcomeNone, "")
			r.release(b.pod, outcomeNone, "")
			require.Equal(t, Load{Ready: 2, LastActive: r.load().LastActive}, r.load())
		})
	}
}

// A retry whose untried pods all leave is answered at once, not left to
// wait for the timeout.
func TestRetryExhaustedWhileWaiting(t *testing.T) {
	r := testRevision(t, 1, queueingOf(DefaultConfig()), "a", "b")
	adm, err := r.obtain(context.Background(), &scheduler.Request{API: scheduler.APIChat}, map[string]bool{"a": true}, anon, time.Minute)
	require.NoError(t, err)
	require.Equal(t, "b", adm.pod.Name)
	retry := obtainAsync(r, context.Background(), map[string]bool{"a": true}, anon)
	waitRevBuffered(t, r, 1)
	r.setEndpoints([]fleet.Endpoint{{Name: "a", Address: "127.0.0.1:1"}})
	o := <-retry
	require.ErrorIs(t, o.err, errAllTried)
	require.Zero(t, r.load().Buffered)
}

// Saturation by the engine's reports: requests wait while a pod's waiting
// queue or KV-cache usage is at the threshold, and a report below it
// releases as many as the threshold allows (what was handed since the
// report counts until the next).
func TestStatSaturation(t *testing.T) {
	for _, tc := range []struct {
		name            string
		sat             saturation
		busy, free      stats.EngineStat
		cost            int64 // tokens of each request
		releasedByStat  int   // of 3 waiters
		releasedByFinis int   // by one request finishing after
	}{
		{name: "waiting queue", sat: saturation{waiting: 2},
			busy: stats.EngineStat{Waiting: 2}, free: stats.EngineStat{Waiting: 0},
			releasedByStat: 2, releasedByFinis: 1},
		{name: "KV usage, estimated tokens count until the next report", sat: saturation{kv: 0.9},
			busy: stats.EngineStat{KVCacheUsage: 0.95}, free: stats.EngineStat{KVCacheUsage: 0.5, NumGPUBlocks: 10, BlockSize: 16},
			cost: 40, releasedByStat: 2, releasedByFinis: 0},
		{name: "KV usage without a block count: the report alone", sat: saturation{kv: 0.9},
			busy: stats.EngineStat{KVCacheUsage: 0.9}, free: stats.EngineStat{KVCacheUsage: 0.89},
			cost: 1000, releasedByStat: 3},
		{name: "NaN in a report does not saturate", sat: saturation{waiting: 1, kv: 0.5},
			busy: stats.EngineStat{Waiting: 1}, free: stats.EngineStat{Waiting: math.NaN(), KVCacheUsage: math.NaN()},
			releasedByStat: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := queueingOf(DefaultConfig())
			q.sat = tc.sat
			r := testRevision(t, 0, q, "a")
			p := r.pod("a")
			r.setStat(p, &stats.Stat{Engine: tc.busy})
			tk := anon
			tk.input = tc.cost
			var waiters []<-chan obtained
			for i := range 3 {
				waiters = append(waiters, obtainAsync(r, context.Background(), nil, tk))
				waitRevBuffered(t, r, i+1)
			}
			r.setStat(p, &stats.Stat{Engine: tc.free})
			for i := range tc.releasedByStat {
				require.Equal(t, "a", got(t, waiters[i]).pod.Name)
			}
			waitRevBuffered(t, r, 3-tc.releasedByStat)
			if tc.releasedByStat == 3 {
				return
			}
			r.release(p, outcomeNone, "")
			for i := range tc.releasedByFinis {
				got(t, waiters[tc.releasedByStat+i])
			}
			waitRevBuffered(t, r, 3-tc.releasedByStat-tc.releasedByFinis)
		})
	}
}

// A stats report of a pod that left changes nothing, and a pod that never
// reported is not saturated.
func TestStatOfAPodThatLeft(t *testing.T) {
	q := queueingOf(DefaultConfig())
	q.sat = saturation{waiting: 1}
	r := testRevision(t, 0, q, "a")
	p := r.pod("a")
	r.setEndpoints(nil)
	r.setStat(p, &stats.Stat{Engine: stats.EngineStat{Waiting: 9}})
	require.Empty(t, r.loads)
	r.setEndpoints([]fleet.Endpoint{{Name: "b", Address: "127.0.0.1:1"}})
	adm, err := r.obtain(context.Background(), &scheduler.Request{API: scheduler.APIChat}, nil, anon, time.Minute)
	require.NoError(t, err)
	require.Equal(t, "b", adm.pod.Name)
}

// A waiter whose context ends while it is handed a pod gives the pod back:
// after many such races no capacity is lost and nothing is left queued or
// charged.
func TestWaiterLeavingRacesItsHandOff(t *testing.T) {
	r := testRevision(t, 1, queueingOf(DefaultConfig()), "a")
	tk := waitTicket{tenant: "ns/t", class: fairqueue.Standard, weight: 1, input: 10, output: 10}
	for range 200 {
		hold, err := r.obtain(context.Background(), &scheduler.Request{API: scheduler.APIChat}, nil, tk, time.Minute)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		w := obtainAsync(r, ctx, nil, tk)
		waitRevBuffered(t, r, 1)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); cancel() }()
		go func() { defer wg.Done(); r.release(hold.pod, outcomeNone, "") }()
		wg.Wait()
		if o := <-w; o.err == nil {
			fairCharge{rev: r, tk: tk, entry: o.adm.entry}.charge(&openai.Usage{})
			r.release(o.adm.pod, outcomeNone, "")
		}
	}
	require.Equal(t, Load{Ready: 1, LastActive: r.load().LastActive}, r.load())
	require.Zero(t, r.queue.Stats().Waiting)
	st, ok := r.queue.Tenant("ns/t")
	require.True(t, ok)
	require.Zero(t, st.Counter, "a request that never ran is charged nothing")
}

// Hostile inputs to the estimate and the settlement: bounds that are not
// positive integers take the default, huge ones are capped, and a usage
// beyond reason cannot wrap a counter negative.
func TestEstimateAndSettleBounds(t *testing.T) {
	for _, tc := range []struct {
		body    string
		api     string
		wantOut int64
	}{
		{`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100}`, scheduler.APIChat, 100},
		{`{"model":"m","messages":[],"max_completion_tokens":7,"max_tokens":100}`, scheduler.APIChat, 7},
		{`{"model":"m","messages":[],"max_tokens":-5}`, scheduler.APIChat, DefaultOutputTokens},
		{`{"model":"m","messages":[],"max_tokens":"many"}`, scheduler.APIChat, DefaultOutputTokens},
		{`{"model":"m","messages":[],"max_tokens":1e30}`, scheduler.APIChat, DefaultOutputTokens},
		{`{"model":"m","messages":[],"max_tokens":99999999999}`, scheduler.APIChat, maxUsageTokens},
		{`{"model":"m","prompt":"abcdefgh","max_tokens":3}`, scheduler.APICompletions, 3},
		{`{"model":"m","input":"abcdefgh","max_tokens":3}`, scheduler.APIEmbeddings, 0},
		{`{"model":"m","messages":"not a list"}`, scheduler.APIChat, DefaultOutputTokens},
	} {
		t.Run(tc.body, func(t *testing.T) {
			obj, err := openai.Parse([]byte(tc.body))
			require.NoError(t, err)
			in, out := estimateTokens(routed{body: obj.Raw(), req: &scheduler.Request{Body: obj, API: tc.api}})
			require.Equal(t, tc.wantOut, out)
			require.Positive(t, in, "some input is always counted")
		})
	}

	r := testRevision(t, 1, queueingOf(DefaultConfig()), "a")
	c := fairCharge{rev: r, tk: waitTicket{tenant: "ns/t", class: fairqueue.Standard, weight: 1}}
	c.charge(&openai.Usage{PromptTokens: math.MaxUint64, CompletionTokens: math.MaxUint64})
	st, _ := r.queue.Tenant("ns/t")
	require.Positive(t, st.Counter)
	require.False(t, math.IsInf(st.Counter, 0) || math.IsNaN(st.Counter))
	c.charge(nil) // unknown usage: nothing moves
	st2, _ := r.queue.Tenant("ns/t")
	require.Equal(t, st.Counter, st2.Counter)
	fairCharge{rev: r, tk: anon}.charge(&openai.Usage{PromptTokens: 5}) // the open API is not charged
	_, ok := r.queue.Tenant("")
	require.False(t, ok)
}

// An unknown priority (a Tenant that bypassed validation) is standard, a
// weight below 1 counts as 1.
func TestTicketOfTenant(t *testing.T) {
	a, err := New(DefaultConfig(), WithStatsStreams(false))
	require.NoError(t, err)
	t.Cleanup(a.Close)
	obj, err := openai.Parse([]byte(`{"model":"m","messages":[]}`))
	require.NoError(t, err)
	for _, tc := range []struct {
		priority v1alpha1.TenantPriority
		weight   int32
		class    fairqueue.Class
	}{
		{"critical", 3, fairqueue.Critical},
		{"sheddable", 1, fairqueue.Sheddable},
		{"gold", 1, fairqueue.Standard},
		{"", 0, fairqueue.Standard},
	} {
		tn := &tenant{cfg: TenantConfig{Namespace: "ns", Name: "t", Priority: tc.priority, Weight: tc.weight}}
		tk := a.ticketOf(routed{tenant: tn, body: obj.Raw(), req: &scheduler.Request{Body: obj, API: scheduler.APIChat}})
		require.Equal(t, "ns/t", tk.tenant)
		require.Equal(t, tc.class, tk.class, string(tc.priority))
		require.Equal(t, int(tc.weight), tk.weight)
	}
	tk := a.ticketOf(routed{body: obj.Raw(), req: &scheduler.Request{Body: obj, API: scheduler.APIChat}})
	require.Equal(t, anon, tk, "the open API: one anonymous tenant, no estimate needed")
}

func TestSaturationConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{name: "off by default", mutate: func(*Config) {}},
		{name: "both set", mutate: func(c *Config) { c.SaturationWaiting, c.SaturationKVUsage = 4, 0.9 }},
		{name: "KV usage 1", mutate: func(c *Config) { c.SaturationKVUsage = 1 }},
		{name: "negative waiting", mutate: func(c *Config) { c.SaturationWaiting = -1 }, wantErr: "saturation-waiting"},
		{name: "KV usage above 1", mutate: func(c *Config) { c.SaturationKVUsage = 1.5 }, wantErr: "saturation-kv-usage"},
		{name: "negative KV usage", mutate: func(c *Config) { c.SaturationKVUsage = -0.1 }, wantErr: "saturation-kv-usage"},
		{name: "NaN KV usage", mutate: func(c *Config) { c.SaturationKVUsage = math.NaN() }, wantErr: "saturation-kv-usage"},
		{name: "infinite KV usage", mutate: func(c *Config) { c.SaturationKVUsage = math.Inf(1) }, wantErr: "saturation-kv-usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// Priority headroom: with the last slot of a pod of 4 kept, a tenant past
// its share (heavy, which shares the revision with light) runs 3 requests
// and queues the rest, while a light tenant's request, or a critical one,
// starts at once in the kept slot. Without headroom heavy takes all 4 and
// the light request waits.
func TestPriorityHeadroom(t *testing.T) {
	for _, tc := range []struct {
		name     string
		headroom int
		late     string // the tenant whose request arrives last
		starts   bool   // it reaches the engine at once
	}{
		{name: "a light tenant starts in the headroom", headroom: 1, late: "light", starts: true},
		{name: "a critical request starts in the headroom", headroom: 1, late: "crit", starts: true},
		{name: "a tenant past its share waits", headroom: 1, late: "heavy"},
		{name: "without headroom the light tenant waits", late: "light"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newFairRigCap(t, 4, func(c *Config) { c.PriorityHeadroom = tc.headroom },
				tenantSpec{"heavy", "standard", 1}, tenantSpec{"light", "standard", 1}, tenantSpec{"crit", "critical", 1})
			var answers []<-chan answer
			// light has used the revision: it is active, heavy's share is half.
			answers = append(answers, r.send(t, context.Background(), "light", "light-warm"))
			require.Equal(t, "light-warm", r.gate.first(t))
			r.gate.finish <- struct{}{}
			require.Equal(t, http.StatusOK, (<-answers[0]).code)

			running := 4 - tc.headroom
			for i := range running {
				answers = append(answers, r.send(t, context.Background(), "heavy", fmt.Sprintf("heavy-%d", i)))
				r.gate.first(t)
			}
			answers = append(answers, r.send(t, context.Background(), "heavy", "heavy-queued"))
			r.waitBuffered(t, 1)
			answers = append(answers, r.send(t, context.Background(), tc.late, tc.late+"-late"))
			if tc.starts {
				require.Equal(t, tc.late+"-late", r.gate.first(t), "starts while heavy's request waits")
				r.waitBuffered(t, 1)
			} else {
				r.waitBuffered(t, 2)
			}
			close(r.gate.finish) // let everything through
			for _, ch := range answers[1:] {
				require.Equal(t, http.StatusOK, (<-ch).code)
			}
		})
	}
}

// A tenant's request that no replica could take (every attempt a 503)
// gives back what the fair queue charged it: its counter is where it was,
// as its rate limit reservation is refunded.
func TestFailedDispatchRefundsTheFairCharge(t *testing.T) {
	r := newFairRig(t, nil, tenantSpec{"t", "standard", 1})
	down := backend(t, "down", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":{"message":"overloaded","type":"server_error"}}`)
	})
	r.act.SetEndpoints(key("m-1"), []fleet.Endpoint{down})
	rev := r.act.lookupRevision(key("m-1"))
	require.NotNil(t, rev)
	a := <-r.send(t, context.Background(), "t", "u-1")
	require.Equal(t, http.StatusServiceUnavailable, a.code, "%s", a.body)
	st, ok := rev.queue.Tenant("default/t")
	require.True(t, ok, "the request was charged when it took the pod")
	require.Zero(t, st.Counter, "and given back when no replica took it")
	rev.mu.Lock()
	u := rev.use["default/t"]
	rev.mu.Unlock()
	require.NotNil(t, u)
	require.Zero(t, u.inFlight, "its slot counted out again")
}
