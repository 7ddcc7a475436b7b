package main

import "github.com/kvasir-serving/kvasir/pkg/testing/promtest"

// scrapeGauge sums a gauge over its series.
func scrapeGauge(url, name string) (float64, bool) {
	fams, err := promtest.Scrape(url)
	if err != nil {
		return 0, false
	}
	return promtest.Sum(fams, name)
}
