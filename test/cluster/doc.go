// Package cluster tests Kvasir as users install it: `ko apply -f config/`
// onto a real single-node Kubernetes cluster (hack/cluster-up.sh: containerd
// and runc, a CNI bridge, kubelet, kube-proxy, CoreDNS, all built from the Go
// module proxy), then a model served from zero through the activator's
// Service with the official OpenAI client, a canary with a tag, the pods'
// security contexts as the container runtime enforces them, and kubectl
// delete. The cluster is torn down at the end and nothing is left behind.
//
// The test needs Linux and root; elsewhere it is skipped with the reason.
// Set KVASIR_CLUSTER_KEEP=1 to leave the cluster up after the test
// (hack/cluster-down.sh removes it).
package cluster
