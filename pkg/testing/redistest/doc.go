// Package redistest runs a real redis-server for tests: Debian's, fetched by
// hack/redis-assets.sh without a system install, on 127.0.0.1 at a free port,
// without persistence, stopped when the test ends.
//
// The binary comes from, in order: $KVASIR_REDIS_SERVER (what `make test`
// sets), redis-server on PATH, or hack/redis-assets.sh run on first use. When
// none works the test fails and says how to get one; it never skips.
package redistest
