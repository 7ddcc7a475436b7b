// Package kubetest owns the real API server of Kvasir's Kubernetes tests
// (controller-runtime's envtest with binaries built from the Go module
// proxy); see Start.
package kubetest
