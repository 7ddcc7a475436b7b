// Package kube holds tests of Kvasir's Kubernetes pieces working together
// against a real API server (envtest): the reconcilers, the autoscaler and
// an activator fed by informers, with real queue-proxies and simulators on
// loopback where a kubelet would run pods.
package kube
