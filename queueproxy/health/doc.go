// Package health holds a queue-proxy's readiness and drain state, as
// Knative's pkg/queue/health does for its queue-proxy.
//
// A State follows the engine's health through a Prober (in the background
// and, while the engine is not known ready, on each readiness request) and
// answers the readiness endpoint. Draining fails readiness at once; once the
// drain's quiet period is over and no proxied request is left, the
// wait-for-drain endpoint answers, so that the engine is stopped only after
// the queue-proxy has finished every request.
package health
