// Package kube is the Kubernetes implementation of the runtime seam
// (pkg/fleet): a revision role's replicas are its Deployments (or, for
// serving groups, its LeaderWorkerSets, whose replicas are groups), scaled
// per accelerator variant through their scale subresource, and its ready
// endpoints are those of its Service's EndpointSlices.
package kube
