// Package fleet owns the runtime seam between the data plane and whatever
// runs replicas: scale a revision role to N, and watch its ready endpoints.
// Implementations: local processes (pkg/fleet/process) and Kubernetes.
package fleet
