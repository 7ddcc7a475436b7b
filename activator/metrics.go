package activator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the activator's own Prometheus series. Every per-model series
// carries namespace first: two namespaces may hold services of one name.
type metrics struct {
	requests *prometheus.CounterVec
	attempts *prometheus.CounterVec
	duration *prometheus.HistogramVec
	pd       *prometheus.CounterVec
	// tokenizeErrors counts failed asks of an engine's tokenization
	// endpoint (the request was routed on its text).
	tokenizeErrors prometheus.Counter
	// tokenizeSkipped counts prompts not tokenized because maxTokenizing
	// calls were in flight.
	tokenizeSkipped prometheus.Counter
	// tenant are the per-tenant series (tenant_metrics.go).
	tenant *tenantMetrics
	// queue are the fair queue's per-tenant series (fairness.go).
	queue *queueMetrics
}

func newMetrics(reg prometheus.Registerer, a *Activator) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_activator_requests_total",
			Help: "Requests answered by the activator, by namespace, service, revision and HTTP status code.",
		}, []string{"namespace", "service", "revision", "code"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_activator_retries_total",
			Help: "Forwarding attempts retried on another replica before the first byte.",
		}, []string{"namespace", "service", "revision"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvasir_activator_request_duration_seconds",
			Help:    "Time from request arrival to the end of its response.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"namespace", "service", "revision"}),
		pd: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvasir_activator_pd_requests_total",
			Help: "Requests to disaggregated revisions by where their prompt was prefilled: remote (a prefill pod), local (the decode pod held most of it) or fallback (no prefill pod could).",
		}, []string{"namespace", "service", "revision", "prefill"}),
		tokenizeSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvasir_activator_tokenize_skipped_total",
			Help: "Prompts routed on their text without asking the engine to tokenize them, because the activator had its most tokenizations in flight.",
		}),
		tokenizeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvasir_activator_tokenize_errors_total",
			Help: "Prompts an engine's tokenization endpoint did not tokenize; they were routed on their text, without the engine's prefix keys.",
		}),
		tenant: newTenantMetrics(),
		queue:  newQueueMetrics(),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.attempts, m.duration, m.pd, m.tokenizeErrors, m.tokenizeSkipped, &loadCollector{a: a})
		reg.MustRegister(m.tenant.collectors()...)
		reg.MustRegister(m.queue.collectors()...)
	}
	return m
}

// roleLabels are the labels of a revision role's series.
var roleLabels = []string{"namespace", "service", "revision", "role"}

var (
	bufferedDesc = prometheus.NewDesc("kvasir_activator_buffered_requests",
		"Requests buffered in the activator waiting for a ready replica.", roleLabels, nil)
	inFlightDesc = prometheus.NewDesc("kvasir_activator_in_flight_requests",
		"Requests the activator is forwarding now.", roleLabels, nil)
	ejectionsDesc = prometheus.NewDesc("kvasir_activator_replica_ejections_total",
		"Replicas ejected from picking by outlier detection (consecutive connection errors, 502/503/504 or broken answers).",
		roleLabels, nil)
	ejectedDesc = prometheus.NewDesc("kvasir_activator_ejected_replicas",
		"Ready replicas ejected from picking now by outlier detection.", roleLabels, nil)
)

// loadCollector reports per-revision load for every known revision, so a
// revision's series exist (as 0) from the moment it is known.
type loadCollector struct{ a *Activator }

func (c *loadCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bufferedDesc
	ch <- inFlightDesc
	ch <- ejectionsDesc
	ch <- ejectedDesc
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
		ejected, ejections := r.outlierStats()
		lv := []string{r.key.Namespace, r.key.Service, r.key.Revision, r.key.RoleLabel()}
		ch <- prometheus.MustNewConstMetric(bufferedDesc, prometheus.GaugeValue, float64(l.Buffered), lv...)
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(l.InFlight), lv...)
		ch <- prometheus.MustNewConstMetric(ejectionsDesc, prometheus.CounterValue, float64(ejections), lv...)
		ch <- prometheus.MustNewConstMetric(ejectedDesc, prometheus.GaugeValue, float64(ejected), lv...)
	}
}
