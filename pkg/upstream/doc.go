// Package upstream owns the HTTP/1.1 client side of Kvasir's proxy hops
// (activator to queue-proxy, queue-proxy to engine) for requests whose body
// is already in memory.
//
// net/http's Transport hands every request to a write-loop and a read-loop
// goroutine; the clients here write the request and read the response on
// the caller's goroutine, with pooled keep-alive connections. Those
// goroutine hand-offs are a large share of what a hop costs on a small
// machine (docs/benchmarks.md).
//
// Client (client.go) reads responses with net/http's parser into an
// *http.Response; a cancelled context closes the connection, which cancels
// the request upstream. Pool and Conn (conn.go) leave the wire format to the
// caller (the queue-proxy writes requests and parses responses with
// fasthttp's types) and add Conn.Wait: a wait for the upstream's next byte
// during which a Watchdog (watchdog.go: one goroutine for all the waits of
// the pools that share it) asks every interval whether the caller's own
// client left (Watcher), and closes the connection when it did, so that a
// server without a request context (fasthttp) can still cancel the
// upstream's work when its client goes away. The wait itself sleeps in the
// poller: no timer, wake-up or allocation per interval. IsHopByHop is HopByHop for
// header names held as bytes.
package upstream
