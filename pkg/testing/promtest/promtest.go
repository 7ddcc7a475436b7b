// Package promtest reads metrics back from a Prometheus registry in tests.
package promtest

import "github.com/prometheus/client_golang/prometheus"

// Value returns the value of the series of the gauge or counter name whose
// labels include labels, and whether there is one. A registry that fails
// to gather has none.
func Value(g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	fams, err := g.Gather()
	if err != nil {
		return 0, false
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
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
			if c := m.GetCounter(); c != nil {
				return c.GetValue(), true
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}
