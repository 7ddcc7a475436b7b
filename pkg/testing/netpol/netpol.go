// Package netpol evaluates NetworkPolicies' ingress rules as the
// Kubernetes API defines them, for tests that check who may reach a pod
// when the cluster's network enforces the policies (the test clusters'
// networks do not).
package netpol

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Pod is a pod as a policy sees it.
type Pod struct {
	Namespace string
	// NamespaceLabels are its namespace's labels; kubernetes.io/metadata.name
	// is added, as the API server does.
	NamespaceLabels map[string]string
	Labels          map[string]string
}

// Allows tells whether, under policies, from may open a TCP connection to
// port on to (ingress only: egress rules are not evaluated). A pod that no
// policy selects for ingress accepts everything; one that some do accepts
// what one of their rules allows. Named ports and IP blocks match nothing.
func Allows(policies []networkingv1.NetworkPolicy, to, from Pod, port int32) bool {
	isolated := false
	for _, p := range policies {
		if p.Namespace != to.Namespace || !matches(&p.Spec.PodSelector, to.Labels) || !forIngress(p.Spec) {
			continue
		}
		isolated = true
		for _, r := range p.Spec.Ingress {
			if portMatches(r.Ports, port) && peerMatches(r.From, p.Namespace, from) {
				return true
			}
		}
	}
	return !isolated
}

func forIngress(s networkingv1.NetworkPolicySpec) bool {
	if len(s.PolicyTypes) == 0 {
		return true // the API server's default: Ingress (plus Egress with egress rules)
	}
	for _, t := range s.PolicyTypes {
		if t == networkingv1.PolicyTypeIngress {
			return true
		}
	}
	return false
}

func portMatches(ports []networkingv1.NetworkPolicyPort, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type != 0: // named
		case p.EndPort != nil:
			if port >= p.Port.IntVal && port <= *p.EndPort {
				return true
			}
		case p.Port.IntVal == port:
			return true
		}
	}
	return false
}

func peerMatches(peers []networkingv1.NetworkPolicyPeer, policyNS string, from Pod) bool {
	if len(peers) == 0 {
		return true
	}
	nsLabels := map[string]string{"kubernetes.io/metadata.name": from.Namespace}
	for k, v := range from.NamespaceLabels {
		nsLabels[k] = v
	}
	for _, peer := range peers {
		switch {
		case peer.IPBlock != nil:
		case peer.NamespaceSelector == nil && peer.PodSelector == nil:
		case peer.NamespaceSelector == nil:
			if from.Namespace == policyNS && matches(peer.PodSelector, from.Labels) {
				return true
			}
		case matches(peer.NamespaceSelector, nsLabels) && (peer.PodSelector == nil || matches(peer.PodSelector, from.Labels)):
			return true
		}
	}
	return false
}

func matches(s *metav1.LabelSelector, l map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return false
	}
	return sel.Matches(labels.Set(l))
}
