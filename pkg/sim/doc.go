// Package sim owns the vLLM-compatible engine simulator: an OpenAI API server
// (chat, completions, embeddings, models, health, Prometheus metrics with vLLM
// names) backed by a simulated continuous-batching engine with a paged KV
// cache, prefix reuse, chunked prefill and a virtual clock, plus error
// injection (failures, aborted streams, crashes) and LoRA adapters. It can
// play either half of disaggregated prefill/decode (--role and vLLM's
// kv_transfer_params) and answers POST /sim/prefix-match with its true
// prefix-cache state, for an oracle routing strategy in benchmarks.
//
// One scheduler goroutine (Server.Run) owns all engine state; HTTP handlers
// submit sequences to it and are woken as their tokens are produced. Physics
// costs come from a named profile (see Profile and docs/simulator.md).
package sim
