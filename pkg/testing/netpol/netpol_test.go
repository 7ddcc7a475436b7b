package netpol

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestAllows(t *testing.T) {
	web := Pod{Namespace: "app", Labels: map[string]string{"app": "web"}}
	db := Pod{Namespace: "app", Labels: map[string]string{"app": "db"}}
	other := Pod{Namespace: "ops", Labels: map[string]string{"app": "web"}}
	require.True(t, Allows(nil, db, web, 5432), "no policy: open")

	tcp, port := corev1.ProtocolTCP, intstr.FromInt32(5432)
	pol := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}}
	require.False(t, Allows([]networkingv1.NetworkPolicy{pol}, db, web, 5432), "selected, no rule: closed")
	require.True(t, Allows([]networkingv1.NetworkPolicy{pol}, web, db, 80), "a pod the policy does not select stays open")

	pol.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
		From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
	}}
	ps := []networkingv1.NetworkPolicy{pol}
	require.True(t, Allows(ps, db, web, 5432))
	require.False(t, Allows(ps, db, web, 22), "another port")
	require.False(t, Allows(ps, db, other, 5432), "a pod selector alone means the policy's namespace")

	pol.Spec.Ingress[0].From[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "ops"}}
	ps = []networkingv1.NetworkPolicy{pol}
	require.True(t, Allows(ps, db, other, 5432), "namespace and pod selectors: both must match")
	require.False(t, Allows(ps, db, web, 5432))

	pol.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	require.True(t, Allows([]networkingv1.NetworkPolicy{pol}, db, web, 22), "an egress-only policy does not isolate for ingress")
}
