// Package prompt owns how Kvasir turns an OpenAI request into the token
// stream its components reason about, without a real tokenizer: the canonical
// rendering of chat messages, a deterministic four-bytes-a-token tokenizer and
// the chained hashes of full KV blocks that prefix caching keys on.
//
// Everything here is pure and deterministic across processes, so a router and
// an engine (or the simulator) compute identical block hashes for a prompt.
package prompt
