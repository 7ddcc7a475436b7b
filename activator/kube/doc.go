// Package kube feeds an activator from a Kubernetes cluster: ModelServices
// (their resolved status.traffic) and ModelRevisions, read through
// informers, namespace-wide or cluster-wide; the endpoints of the revision
// roles it routes to through the runtime seam's Kubernetes watcher
// (pkg/fleet/kube.Watcher, over EndpointSlices, on the same cache); and
// the Tenants, their keys resolved from Secrets (tenants.go).
// Several activator replicas each run their own Sync and agree, since they
// read the same objects.
package kube
