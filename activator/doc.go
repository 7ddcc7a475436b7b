// Package activator owns the data-plane entry: the OpenAI API over HTTP (with
// SSE streaming) and WebSocket, the choice of revision for a request (traffic
// split and tags, via pkg/traffic), buffering while a revision has no ready
// replica (asking for scale-up at once), the choice of replica (a
// pkg/scheduler profile per revision, fed by every pod's queue-proxy stats
// stream and the revision's prefix index), prefill/decode disaggregation, and
// forwarding to the replica's queue-proxy with retries before the first byte.
//
// The activator does not run replicas: endpoints are pushed into it through
// SetEndpoints (from a fleet.Watcher) and demand leaves it through the
// OnDemand hook, so local mode and Kubernetes wire it the same way.
package activator
