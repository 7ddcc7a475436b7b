// Package sim owns the vLLM-compatible engine simulator: an OpenAI API server
// (chat, completions, embeddings, models, health, Prometheus metrics with vLLM
// names) backed by a simulated continuous-batching engine with a paged KV
// cache, prefix reuse, chunked prefill and a virtual clock, plus error
// injection (failures, aborted streams, crashes) and LoRA adapters.
//
// One scheduler goroutine (Server.Run) owns all engine state; HTTP handlers
// submit sequences to it and are woken as their tokens are produced. Physics
// costs come from a named profile (see Profile and docs/simulator.md).
package sim
