// Package kube feeds an activator from a Kubernetes cluster: ModelServices
// (their resolved status.traffic), ModelRevisions and the EndpointSlices of
// revision Services, read through informers, namespace-wide or cluster-wide.
// Several activator replicas each run their own Sync and agree, since they
// read the same objects.
package kube
