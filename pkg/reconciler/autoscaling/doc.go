// Package autoscaling runs pkg/autoscaler's Pass over every ModelRevision
// role on Kubernetes, in the controller's leader: it receives the
// activators' demand over WebSocket and follows every revision pod's
// queue-proxy stats stream, places the replicas it wants on the
// accelerator variants by cost within the nodes' free allocatable
// capacity, scales the Deployments (LeaderWorkerSets for serving groups,
// counted in groups) through their scale subresource
// (pkg/fleet/kube), and reports its decisions as metrics, events and the
// revisions' CapacityAvailable condition.
package autoscaling
