// Package resources builds the Kubernetes objects of a ModelRevision: per
// role, a Deployment (the engine container with the queue-proxy as a
// sidecar) and a Service whose EndpointSlices the activators follow. The
// builders are pure functions of the revision and the controller's
// configuration.
package resources
