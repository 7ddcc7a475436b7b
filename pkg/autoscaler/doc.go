// Package autoscaler owns Kvasir's scaling decisions, shared by local mode
// and Kubernetes: the Decider turns LLM signals (demand seen by activators,
// engines' waiting queues, KV-cache usage, token throughput) into a desired
// replica count with Knative KPA mechanics (stable and panic windows,
// rates, scale-to-zero grace). Placement on accelerators and the runtimes
// that act on decisions build on it.
package autoscaler
