// Package peerengine gives tests the binary of a vLLM-compatible engine
// nobody here wrote, github.com/llm-d/llm-d-inference-sim, built from the
// module proxy by hack/peer-assets.sh (version pinned in hack/peer/go.mod).
package peerengine
