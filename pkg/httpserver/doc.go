// Package httpserver holds what every public listener of Kvasir's data
// plane (the activator, `kvasir local`, the queue-proxy) needs to face
// clients it does not trust: read timeouts for headers and for the whole
// body, a cap on connections, a limit on header size, and a memory budget
// shared by every request body held in memory at once.
//
// The limits bound what a slow or hostile client can hold: a connection
// that sends its headers or its body too slowly is cut off (a body too slow
// answers 408), a connection past the cap is answered 503 and closed, and a
// body that would take the buffered bodies past the budget answers 503 with
// Retry-After before it is read, never growing memory without bound.
//
// New serves a net/http handler with them; NewFast (FastServer) a fasthttp
// handler, with BodyReader.ReadRequest for its streamed bodies (pooled
// memory), WriteArmer for the write timeout of streamed responses, and
// PeerClosed, a look at a client's socket that consumes nothing, for the
// handlers that must notice a client gone while they wait (fasthttp gives a
// handler no such signal).
package httpserver
