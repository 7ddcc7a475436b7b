package resources

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"knative.dev/pkg/kmeta"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// labelNamespaceName is the label the API server puts on every namespace,
// its name.
const labelNamespaceName = "kubernetes.io/metadata.name"

// NetworkPolicyName is the name of a revision's NetworkPolicy.
func NetworkPolicyName(rev *v1alpha1.ModelRevision) string { return rev.Name }

// MakeNetworkPolicy builds the NetworkPolicy of a revision's pods, all
// roles, owned by the revision. It isolates them for ingress and lets in:
//   - on the queue-proxy port, Kvasir's activators (requests, stats
//     streams) and controller (the autoscaler follows the stats streams),
//     from cfg.SystemNamespace;
//   - with prefill and decode roles, the revision's own pods on any port:
//     decode engines pull the KV cache from prefill engines (NIXL's side
//     channel and transfer ports are the engine's to choose);
//   - with serving groups (a role of several pods a replica: Grouped), the
//     revision's own pods on any port as well: a group's pods meet at its
//     leader and talk among themselves (NCCL, Ray, vLLM's data-parallel
//     RPC, SGLang's dist-init) on ports the engines choose.
//
// The engine port is not in the list: the engine listens on loopback, and
// the policy shuts it for clusters whose CNI enforces policies even if a
// template makes it listen wider. Probes come from the node, which
// NetworkPolicies always let in. A policy lives in the revision's
// namespace, which is why the controller makes one per revision instead of
// config/ shipping one.
func MakeNetworkPolicy(rev *v1alpha1.ModelRevision, cfg Config) *networkingv1.NetworkPolicy {
	ns := cfg.SystemNamespace
	if ns == "" {
		ns = DefaultSystemNamespace
	}
	tcp, qp := corev1.ProtocolTCP, intstr.FromInt32(names.QueueProxyPort)
	revisionPods := metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelRevision: rev.Name}}
	rules := []networkingv1.NetworkPolicyIngressRule{{
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &qp}},
		From: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{labelNamespaceName: ns}},
			PodSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{LabelAppName: AppName},
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: LabelComponent,
					Operator: metav1.LabelSelectorOpIn, Values: []string{ComponentActivator, ComponentController}}},
			},
		}},
	}}
	if rev.Spec.Roles != nil || AnyGrouped(rev) {
		rules = append(rules, networkingv1.NetworkPolicyIngressRule{
			From: []networkingv1.NetworkPolicyPeer{{PodSelector: revisionPods.DeepCopy()}},
		})
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Name:      NetworkPolicyName(rev),
			Namespace: rev.Namespace,
			Labels: map[string]string{
				v1alpha1.LabelService:  rev.Labels[v1alpha1.LabelService],
				v1alpha1.LabelRevision: rev.Name,
			},
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)},
		},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: revisionPods,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress:     rules,
		},
	}
}
