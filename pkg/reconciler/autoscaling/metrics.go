package autoscaling

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// metrics are the autoscaler's decisions and observations per revision
// role (and per accelerator variant for the replica counts).
type metrics struct {
	desired, panic                       *prometheus.GaugeVec
	concurrency, waiting, kv, tokensRate *prometheus.GaugeVec
	cpu, memory                          *prometheus.GaugeVec
	revDesired, revReady, unplaceable    *prometheus.GaugeVec
}

var roleLabels = []string{"namespace", "service", "revision", "role"}

func newMetrics(reg prometheus.Registerer) *metrics {
	g := func(name, help string, labels []string) *prometheus.GaugeVec {
		v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
		if reg != nil {
			reg.MustRegister(v)
		}
		return v
	}
	withVariant := append(append([]string(nil), roleLabels...), "variant")
	return &metrics{
		desired: g("kvasir_autoscaler_desired_replicas", "Replicas the autoscaler's decider wants for a revision role, before placement.", roleLabels),
		panic:   g("kvasir_autoscaler_panic_mode", "1 while the revision role's decider is in panic mode.", roleLabels),
		concurrency: g("kvasir_autoscaler_observed_concurrency",
			"Requests in flight plus buffered at the activators for a revision role.", roleLabels),
		waiting: g("kvasir_autoscaler_observed_waiting_requests", "Engines' waiting queues of a revision role, summed.", roleLabels),
		kv:      g("kvasir_autoscaler_observed_kv_cache_usage", "Mean KV-cache usage (0..1) of a revision role's replicas.", roleLabels),
		tokensRate: g("kvasir_autoscaler_observed_tokens_per_second",
			"Prompt plus completion tokens per second of a revision role's replicas.", roleLabels),
		cpu: g("kvasir_autoscaler_observed_cpu_cores",
			"CPU cores a revision role's pods use, summed (metrics.k8s.io, read while some revision has a cpu or memoryGiB target; else 0).", roleLabels),
		memory: g("kvasir_autoscaler_observed_memory_bytes",
			"Memory a revision role's pods use, summed (metrics.k8s.io, read while some revision has a cpu or memoryGiB target; else 0).", roleLabels),
		revDesired: g("kvasir_revision_desired_replicas",
			"Replicas of a revision role after placement, per accelerator variant (variant empty without variants).", withVariant),
		revReady: g("kvasir_revision_ready_replicas",
			"Ready replicas of a revision role, per accelerator variant (variant empty without variants).", withVariant),
		unplaceable: g("kvasir_revision_unplaceable_replicas",
			"Replicas the autoscaler wants for a revision role beyond the free accelerators.", roleLabels),
	}
}

func labelsOf(k fleet.Key) prometheus.Labels {
	return prometheus.Labels{"namespace": k.Namespace, "service": k.Service, "revision": k.Revision, "role": k.RoleLabel()}
}

func (m *metrics) observe(k fleet.Key, sig autoscaler.Signals, dec autoscaler.Decision) {
	l := labelsOf(k)
	m.desired.With(l).Set(float64(dec.Desired))
	panicking := 0.0
	if dec.Panic {
		panicking = 1
	}
	m.panic.With(l).Set(panicking)
	m.concurrency.With(l).Set(sig.Concurrency)
	m.waiting.With(l).Set(sig.Waiting)
	m.kv.With(l).Set(sig.KVCacheUsage)
	m.tokensRate.With(l).Set(sig.TokensPerSecond)
	m.cpu.With(l).Set(sig.CPU)
	m.memory.With(l).Set(sig.MemoryGiB * (1 << 30))
}

func (m *metrics) placed(k fleet.Key, variant string, desired, ready int) {
	l := labelsOf(k)
	l["variant"] = variant
	m.revDesired.With(l).Set(float64(desired))
	m.revReady.With(l).Set(float64(ready))
}

// forget drops every series of a revision role.
func (m *metrics) forget(k fleet.Key) {
	l := labelsOf(k)
	for _, v := range []*prometheus.GaugeVec{m.desired, m.panic, m.concurrency, m.waiting, m.kv, m.tokensRate,
		m.cpu, m.memory, m.revDesired, m.revReady, m.unplaceable} {
		v.DeletePartialMatch(l)
	}
}
