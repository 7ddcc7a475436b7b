// Package names holds the names, ports and roles of what a revision owns
// on Kubernetes: its Deployments, Services and the ConfigMap of its
// service's LoRA adapters. The reconcilers that build those objects and
// the activator that routes to them (activator/kube) agree through it
// without the activator importing the builders.
package names
