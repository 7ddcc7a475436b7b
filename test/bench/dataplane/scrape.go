package main

import (
	"net/http"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeGauge sums a gauge over its series.
func scrapeGauge(url, name string) (float64, bool) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil || fams[name] == nil {
		return 0, false
	}
	sum := 0.0
	for _, m := range fams[name].GetMetric() {
		sum += m.GetGauge().GetValue()
	}
	return sum, true
}
