package httpserver

import (
	"net/http"
	"net/http/pprof"
	"strconv"
)

// AdminMux serves the operator endpoints every component has: its
// metrics, /healthz and Go's pprof. They belong on the admin listener,
// never on the public one: metrics name models and internal addresses, and
// profiles cost CPU on demand. Components add their own endpoints to it.
func AdminMux(metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", Healthz)
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.Handle("/debug/pprof/profile", capSeconds(pprof.Profile))
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.Handle("/debug/pprof/trace", capSeconds(pprof.Trace))
	return mux
}

// MaxProfileSeconds is the longest CPU profile or execution trace the
// admin endpoints take (?seconds=); pprof itself takes any length, and
// holds the connection and the profiler that long.
const MaxProfileSeconds = 60

// capSeconds answers 400 to a profile asking for more than
// MaxProfileSeconds.
func capSeconds(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.FormValue("seconds"); s != "" {
			if sec, err := strconv.ParseFloat(s, 64); err == nil && sec > MaxProfileSeconds {
				http.Error(w, "seconds: at most "+strconv.Itoa(MaxProfileSeconds), http.StatusBadRequest)
				return
			}
		}
		h(w, r)
	})
}

// Healthz answers a liveness probe.
func Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("ok\n"))
}
