// Package upstream owns the HTTP/1.1 client of Kvasir's proxy hops (activator
// to queue-proxy, queue-proxy to engine) for requests whose body is already
// in memory.
//
// net/http's Transport hands every request to a write-loop and a read-loop
// goroutine; this client writes the request and reads the response on the
// caller's goroutine, with pooled keep-alive connections. Those two fewer
// goroutine hand-offs are a large share of what a hop costs on a small
// machine (docs/benchmarks.md). A cancelled context closes the connection,
// which cancels the request upstream; a timeout bounds the whole exchange
// through the connection's deadline.
package upstream
