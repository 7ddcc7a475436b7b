// Command tenants benchmarks issue 15's tenant goals that `kvasir bench
// compare` cannot measure, end to end: real processes on loopback (a real
// redis-server, `kvasir local` with its simulated engines) and load from a
// plain net/http loop.
//
//	go run ./test/bench/tenants ratelimit --kvasir ./bin/kvasir                 # ~5 min: fail open, then closed
//	go run ./test/bench/tenants ratelimit --kvasir ./bin/kvasir --processes 3   # the same through 3 processes
//
// ratelimit: a tenant limited to N tokens per minute (--tokens-per-minute),
// driven at 3N (--overload) through 3 activators whose counters live in one
// redis-server, is served within 5% of N per minute; with redis-server
// killed mid-run (--kill-after), the configured fail mode (--fail: open,
// closed, or both in turn) shows within 1 s: under open, a request beyond
// the limit allowed; under closed, a 503.
//
// The activators run in one of two ways. By default (--processes 1), one
// kvasir local runs them (--activators, 3) in its one process. With
// --processes N > 1, N separate kvasir local processes run, as activator
// pods do on Kubernetes: each with its own fleet of the simulated model,
// the same Tenant and --activators 1 (unless --activators says otherwise),
// and only redis-server in common; the load goes round robin over their
// APIs, and the served rate and the fail mode are judged from the answers
// of all of them together. The table's first line says which way ran, and
// lists each process's answers when there are several. Which process admits
// a request is the limit's business, not the load's: at an --overload equal
// to --processes, the one request in three that fits arrives, round after
// round, at the same process, while the others refuse theirs.
//
// It prints a table, writes settings, results and goals to --json OUT when
// asked, and exits 1 with the goals it missed named on stderr. The kvasir
// binary is built into a temporary directory unless --kvasir names one;
// redis-server is --redis-server, else $KVASIR_REDIS_SERVER, redis-server on
// PATH, or what hack/redis-assets.sh (make redis-assets) put in its cache.
// The platform's logs go to a temporary directory that is kept (and named)
// when the run fails, or to --log-dir.
package main

import (
	"github.com/kvasir-serving/kvasir/test/bench/internal/benchkit"
)

func main() {
	benchkit.Main("tenants", "tenants ratelimit [flags]", map[string]benchkit.Benchmark{
		"ratelimit": rateLimit,
	}, " (want ratelimit)")
}
