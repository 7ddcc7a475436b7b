package activator

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// BenchmarkHop measures one non-streaming request through the activator to a
// trivial backend over loopback, client and backend included:
//
//	go test -run '^$' -bench Hop -benchmem ./activator/
func BenchmarkHop(b *testing.B) {
	resp := []byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(resp)
	}))
	defer be.Close()
	act, err := New(DefaultConfig(), WithRegisterer(prometheus.NewRegistry()), WithStatsStreams(false))
	if err != nil {
		b.Fatal(err)
	}
	if err := act.SetServices([]ServiceConfig{{Namespace: "d", Name: "s", Model: "m",
		Traffic: []traffic.Target{{Revision: "r", Percent: 100}}, Revisions: []RevisionConfig{{Name: "r"}}}}); err != nil {
		b.Fatal(err)
	}
	act.SetEndpoints(fleet.Key{Namespace: "d", Service: "s", Revision: "r"}, []fleet.Endpoint{{Name: "e", Address: strings.TrimPrefix(be.URL, "http://")}})
	front := httptest.NewServer(act.Handler())
	defer front.Close()
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":1}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := client.Post(front.URL+PathChat, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if r.StatusCode != 200 {
			b.Fatal(r.Status)
		}
	}
}

// BenchmarkPrefillRequest measures building the prefill half of a
// disaggregated request from the client's body (parsed once).
func BenchmarkPrefillRequest(b *testing.B) {
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"` + strings.Repeat("You are helpful. ", 400) +
		`"},{"role":"user","content":"hello"}],"max_completion_tokens":64,"stream":true,"stream_options":{"include_usage":true}}`)
	b.ReportAllocs()
	for b.Loop() {
		obj, err := openai.Parse(body)
		if err != nil {
			b.Fatal(err)
		}
		if len(prefillRequest(obj)) == 0 {
			b.Fatal("empty")
		}
	}
}
