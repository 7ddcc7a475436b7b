package activator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the activator's own Prometheus series.
type metrics struct {
	requests *prometheus.CounterVec
	attempts *prometheus.CounterVec
	duration *prometheus.HistogramVec
	pd       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, a *Activator) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_activator_requests_total",
			Help: "Requests answered by the activator, by service, revision and HTTP status code.",
		}, []string{"service", "revision", "code"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_activator_retries_total",
			Help: "Forwarding attempts retried on another replica before the first byte.",
		}, []string{"service", "revision"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvasir_activator_request_duration_seconds",
			Help:    "Time from request arrival to the end of its response.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"service", "revision"}),
		pd: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_activator_pd_requests_total",
			Help: "Requests to disaggregated revisions by where their prompt was prefilled: remote (a prefill pod), local (the decode pod held most of it) or fallback (no prefill pod could).",
		}, []string{"service", "revision", "prefill"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.attempts, m.duration, m.pd, &loadCollector{a: a})
	}
	return m
}

var (
	bufferedDesc = prometheus.NewDesc("kvasir_activator_buffered_requests",
		"Requests buffered in the activator waiting for a ready replica.",
		[]string{"service", "revision", "role"}, nil)
	inFlightDesc = prometheus.NewDesc("kvasir_activator_in_flight_requests",
		"Requests the activator is forwarding now.",
		[]string{"service", "revision", "role"}, nil)
)

// loadCollector reports per-revision load for every known revision, so a
// revision's series exist (as 0) from the moment it is known.
type loadCollector struct{ a *Activator }

func (c *loadCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bufferedDesc
	ch <- inFlightDesc
}

func (c *loadCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.revMu.Lock()
	revs := make([]*revision, 0, len(c.a.revs))
	for _, r := range c.a.revs {
		revs = append(revs, r)
	}
	c.a.revMu.Unlock()
	for _, r := range revs {
		l := r.load()
		role := RoleLabel(r.key.Role)
		ch <- prometheus.MustNewConstMetric(bufferedDesc, prometheus.GaugeValue, float64(l.Buffered), r.key.Service, r.key.Revision, role)
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(l.InFlight), r.key.Service, r.key.Revision, role)
	}
}

// RoleLabel is the value of the role label for a fleet role.
func RoleLabel(role string) string {
	if role == "" {
		return "unified"
	}
	return role
}
