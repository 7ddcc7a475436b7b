// Package queueproxy owns the sidecar that sits in front of one inference
// engine (vLLM, SGLang or the simulator) in a replica.
//
// It serves one port. Under the reserved prefix /kvasir/ it answers its own
// endpoints: readiness that follows the engine's health (/kvasir/ready), a
// WebSocket stream of stats.Stat reports and KV events (/kvasir/stats) and
// its own Prometheus metrics (/kvasir/metrics). Everything else is
// reverse-proxied to the engine, with an optional concurrency limit and FIFO
// queue in front. Readiness and draining (/kvasir/ready, the engine's preStop
// hook /kvasir/wait-for-drain) are a health.State the Proxy composes
// (subpackage health, as Knative's pkg/queue/health).
//
// On the OpenAI completion paths it measures each request as it passes:
// prompt, cached and completion tokens from the usage the engine reports
// (asking for it on streams when the client did not, and hiding it again),
// time to first token and inter-token latency from the SSE events. It scrapes
// the engine's own Prometheus metrics into stats.EngineStat.
//
// It keeps a model of the prompt blocks its engine holds in its prefix cache
// (kvmodel.go: an LRU set of pkg/prompt block hashes fed by the measured
// requests and corrected by the engine's cached_tokens) and streams block
// additions and removals on the same stats stream (stats.KVEvent), so that
// routers can send a request to the pod that already holds its prefix.
//
// Request bodies are read once and passed through byte for byte, except for
// the single stream_options key it may splice in.
//
// The port is served by fasthttp (httpserver.FastServer): each request is
// read, sent to the engine and answered on its connection's goroutine, with
// pooled buffers, over pooled keep-alive connections to the engine
// (upstream.Pool) written and parsed with fasthttp's types. A streamed
// response (SSE, or a body of unknown length) is relayed by the same
// goroutine after the handler returns (the flow is fasthttp's body stream).
// fasthttp gives a handler no sign of a client that left, so the client's
// socket is looked at every checkInterval without consuming anything
// (httpserver.PeerClosed) while the request waits on the engine (by the
// pool's upstream.Watchdog, one goroutine) or in the queue, and the engine
// connection, whose close cancels the engine's work, is closed when the
// client is gone. The /kvasir/ endpoints keep their net/http handlers,
// through fasthttp's adaptor.
package queueproxy
