// Package traffic owns the choice of revision for a request: the weighted
// split of spec.traffic and tag routing. Local mode and Kubernetes share it.
package traffic
