package autoscaling

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
)

// reserve holds back what a role's replicas asked for and have no pod
// yet; for serving groups pod by pod (leaders and workers), so a group
// whose leader runs still holds its workers' share, and a worker never
// counts as a replica of its own. Forged pods of another revision or
// role, finished pods and a worker label naming another role count for
// nothing here.
func TestReserveCountsGroupPods(t *testing.T) {
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "llama-00001", Namespace: "ns"}}
	pod := func(labels map[string]string, phase corev1.PodPhase) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Labels: labels}, Status: corev1.PodStatus{Phase: phase}}
	}
	leader := map[string]string{v1alpha1.LabelRevision: "llama-00001", v1alpha1.LabelRole: "unified"}
	worker := map[string]string{v1alpha1.LabelRevision: "llama-00001", resources.LabelGroupWorker: "unified"}
	other := map[string]string{v1alpha1.LabelRevision: "llama-00002", resources.LabelGroupWorker: "unified"}
	prefillWorker := map[string]string{v1alpha1.LabelRevision: "llama-00001", resources.LabelGroupWorker: "prefill"}
	for _, tc := range []struct {
		name    string
		current int
		pods    []corev1.Pod
		want    int // free GPUs of 16 left
	}{
		{name: "no pod yet: two whole groups", current: 2, want: 16 - 2*4},
		{name: "a leader runs: its three workers and the other group", current: 2,
			pods: []corev1.Pod{pod(leader, corev1.PodRunning)}, want: 16 - 7},
		{name: "one whole group runs", current: 2, pods: []corev1.Pod{pod(leader, ""), pod(worker, ""), pod(worker, ""), pod(worker, "")},
			want: 16 - 4},
		{name: "all run", current: 1, pods: []corev1.Pod{pod(leader, ""), pod(worker, ""), pod(worker, ""), pod(worker, "")}, want: 16},
		{name: "finished and foreign pods count for nothing", current: 1,
			pods: []corev1.Pod{pod(worker, corev1.PodFailed), pod(leader, corev1.PodSucceeded), pod(other, ""), pod(prefillWorker, "")},
			want: 16 - 4},
		{name: "more pods than asked (a group going away)", current: 0,
			pods: []corev1.Pod{pod(leader, ""), pod(worker, "")}, want: 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			free := map[string]int{"nvidia.com/gpu": 16}
			roles := map[fleet.Key]*role{{Revision: rev.Name}: {rev: rev, name: fleet.RoleUnified, obs: autoscaler.Observed{
				Observation: autoscaler.Observation{Variants: []autoscaler.Variant{
					{Pods: 4, Current: tc.current, Need: map[string]int{"nvidia.com/gpu": 4}}}}}}}
			reserve(free, roles, tc.pods)
			require.Equal(t, tc.want, free["nvidia.com/gpu"])
		})
	}
}
