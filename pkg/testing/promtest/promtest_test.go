package promtest

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"
)

func TestScrapeAndRegistryAgree(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "g", Help: "h"}, []string{"k"})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "c_total", Help: "h"})
	reg.MustRegister(g, c)
	g.WithLabelValues("a").Set(2)
	g.WithLabelValues("b").Set(3)
	c.Add(4)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

	v, ok, err := ScrapeValue(srv.URL, "g", map[string]string{"k": "b"})
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, 3.0, v)
	v, ok = Value(reg, "g", map[string]string{"k": "b"})
	require.True(t, ok)
	require.Equal(t, 3.0, v)
	_, ok, err = ScrapeValue(srv.URL, "g", map[string]string{"k": "z"})
	require.NoError(t, err)
	require.False(t, ok)
	_, ok, err = ScrapeValue(srv.URL, "absent", nil)
	require.NoError(t, err)
	require.False(t, ok)

	fams, err := Scrape(srv.URL)
	require.NoError(t, err)
	sum, ok := Sum(fams, "g")
	require.True(t, ok)
	require.Equal(t, 5.0, sum)
	sum, ok = Sum(fams, "c_total")
	require.True(t, ok)
	require.Equal(t, 4.0, sum)
	_, ok = Sum(fams, "absent")
	require.False(t, ok)
}

func TestScrapeFailures(t *testing.T) {
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("not { a metric page\n"))
	}))
	defer bad.Close()
	_, err := Scrape(bad.URL)
	require.Error(t, err)
	bad.Close()
	_, _, err = ScrapeValue(bad.URL, "g", nil)
	require.Error(t, err)
}
