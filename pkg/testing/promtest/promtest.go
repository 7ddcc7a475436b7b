package promtest

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
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

// Scrape reads the metric families of the Prometheus text page at url.
func Scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", url, err)
	}
	return fams, nil
}

// ScrapeValue returns the value of the gauge or counter series name whose
// labels include labels on the Prometheus text page at url, and whether
// there is one.
func ScrapeValue(url, name string, labels map[string]string) (float64, bool, error) {
	fams, err := Scrape(url)
	if err != nil {
		return 0, false, err
	}
	f, ok := fams[name]
	if !ok {
		return 0, false, nil
	}
	v, ok := Lookup(f, labels)
	return v, ok, nil
}

// Sum returns the sum of the series of the gauge, counter or untyped
// family name, and whether the family is there.
func Sum(fams map[string]*dto.MetricFamily, name string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	sum := 0.0
	for _, m := range f.GetMetric() {
		sum += m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
	}
	return sum, true
}
