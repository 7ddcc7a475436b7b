// Package sim owns the vLLM-compatible engine simulator: an OpenAI API server
// (chat, completions, embeddings, models, health, Prometheus metrics with vLLM
// names) backed by a simulated continuous-batching engine with a paged KV
// cache, prefix reuse, chunked prefill and a virtual clock, plus error
// injection (failures, aborted streams, crashes) and LoRA adapters. It can
// play either half of disaggregated prefill/decode (--role and vLLM's
// kv_transfer_params) and answers POST /sim/prefix-match with its true
// prefix-cache state, for an oracle routing strategy in benchmarks. With
// --kv-events-endpoint it publishes the changes of its prefix cache as
// vLLM's KV events (see pkg/kvevents), and it serves vLLM's POST /tokenize
// and POST /reset_prefix_cache. Prompts are rendered canonically by
// pkg/prompt and tokenized four bytes a token, or, with --tokenizer, by a
// Hugging Face tokenizer.json (pkg/tokenizer); the one place that turns
// text into token counts, ids and prefix-cache keys is the tokens
// interface (tokens.go). vLLM's parallelism flags shape the speed of a
// step (parallel.go), and --group-size, --rank and --leader-address make
// it one process of a serving group: the leader serves the API once its
// workers have joined over a small loopback handshake, and a group that
// loses a member exits (group.go).
//
// One scheduler goroutine (Server.Run) owns all engine state; HTTP handlers
// submit sequences to it and are woken as their tokens are produced. Physics
// costs come from a named profile (see Profile and docs/simulator.md).
package sim
