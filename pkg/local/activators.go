package local

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/kvindex"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// activators are the platform's activator replicas: each has its own
// scheduling state and follows every replica's stats stream itself, as
// activator pods behind one Service do on Kubernetes. Requests are spread
// over them round-robin, one request at a time.
type activators struct {
	acts []*activator.Activator
	next atomic.Uint64
}

var _ loadSource = (*activators)(nil)

func newActivators(n int, cfg activator.Config, reg prometheus.Registerer, opts ...activator.Option) (*activators, error) {
	as := &activators{}
	for i := range n {
		r := reg
		if n > 1 { // one series per replica, told apart by label
			r = prometheus.WrapRegistererWith(prometheus.Labels{"activator": strconv.Itoa(i)}, reg)
		}
		a, err := activator.New(cfg, append(opts, activator.WithRegisterer(r))...)
		if err != nil {
			as.Close()
			return nil, err
		}
		as.acts = append(as.acts, a)
	}
	return as, nil
}

func (as *activators) Close() {
	for _, a := range as.acts {
		a.Close()
	}
}

func (as *activators) SetServices(cfgs []activator.ServiceConfig) error {
	for _, a := range as.acts {
		if err := a.SetServices(cfgs); err != nil {
			return err
		}
	}
	return nil
}

func (as *activators) SetEndpoints(key fleet.Key, eps []fleet.Endpoint) {
	for _, a := range as.acts {
		a.SetEndpoints(key, eps)
	}
}

// Load sums the replicas' loads; LastActive is the latest of them.
func (as *activators) Load(key fleet.Key) (activator.Load, bool) {
	var sum activator.Load
	known := false
	for _, a := range as.acts {
		l, ok := a.Load(key)
		if !ok {
			continue
		}
		known = true
		sum.InFlight += l.InFlight
		sum.Buffered += l.Buffered
		sum.Ready = max(sum.Ready, l.Ready)
		if l.LastActive.After(sum.LastActive) {
			sum.LastActive = l.LastActive
		}
	}
	return sum, known
}

// PodStats, PodStat and Index read the first replica (all follow the same
// streams).
func (as *activators) PodStats(key fleet.Key) []*stats.Stat { return as.acts[0].PodStats(key) }

func (as *activators) PodStat(key fleet.Key, pod string) *stats.Stat {
	return as.acts[0].PodStat(key, pod)
}

func (as *activators) Index(key fleet.Key) *kvindex.Index { return as.acts[0].Index(key) }

// Handler spreads requests over the replicas (fasthttp handlers, for
// httpserver.FastServer).
func (as *activators) Handler() fasthttp.RequestHandler {
	if len(as.acts) == 1 {
		return as.acts[0].FastHandler()
	}
	hs := make([]fasthttp.RequestHandler, len(as.acts))
	for i, a := range as.acts {
		hs[i] = a.FastHandler()
	}
	return func(ctx *fasthttp.RequestCtx) {
		hs[as.next.Add(1)%uint64(len(hs))](ctx)
	}
}
