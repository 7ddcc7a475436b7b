// Package peer holds the tests (package peer_test, see peer_test.go) that run
// a vLLM-compatible engine nobody here wrote, llm-d-inference-sim, built from
// the Go module proxy by hack/peer-assets.sh, and check Kvasir's assumptions
// about real engines against it: readiness, model cards, the OpenAI API, KV
// events and /tokenize.
package peer
