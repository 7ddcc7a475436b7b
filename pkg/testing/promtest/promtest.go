package promtest

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the value of the series of the gauge or counter name whose
// labels include labels, and whether there is one. A registry that fails
// to gather has none.
func Value(g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	fams, err := g.Gather()
	if err != nil {
		return 0, false
	}
	for _, f := range fams {
		if f.GetName() == name {
			return Lookup(f, labels)
		}
	}
	return 0, false
}

// Lookup returns the value of the gauge or counter series of a family
// whose labels include labels, and whether there is one.
func Lookup(f *dto.MetricFamily, labels map[string]string) (float64, bool) {
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
