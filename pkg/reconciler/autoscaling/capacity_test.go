package autoscaling

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, ready, cordoned bool, alloc map[string]string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Unschedulable: cordoned}}
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}
	n.Status.Allocatable = corev1.ResourceList{}
	for k, v := range alloc {
		n.Status.Allocatable[corev1.ResourceName(k)] = resource.MustParse(v)
	}
	return n
}

func pod(nodeName string, phase corev1.PodPhase, limits map[string]string) corev1.Pod {
	l := corev1.ResourceList{}
	for k, v := range limits {
		l[corev1.ResourceName(k)] = resource.MustParse(v)
	}
	return corev1.Pod{Spec: corev1.PodSpec{NodeName: nodeName,
		Containers: []corev1.Container{{Name: "engine", Resources: corev1.ResourceRequirements{Limits: l}}}},
		Status: corev1.PodStatus{Phase: phase}}
}

func TestFreeAccelerators(t *testing.T) {
	nodes := []corev1.Node{
		node("a", true, false, map[string]string{"nvidia.com/gpu": "4", "cpu": "32", "memory": "256Gi", "hugepages-2Mi": "1Gi"}),
		node("b", true, false, map[string]string{"nvidia.com/gpu": "2", "huawei.com/ascend-910b": "8"}),
		node("down", false, false, map[string]string{"nvidia.com/gpu": "8"}),
		node("cordoned", true, true, map[string]string{"nvidia.com/gpu": "8"}),
	}
	pods := []corev1.Pod{
		pod("a", corev1.PodRunning, map[string]string{"nvidia.com/gpu": "2", "cpu": "4"}),
		pod("b", corev1.PodPending, map[string]string{"huawei.com/ascend-910b": "3"}), // bound, starting
		pod("a", corev1.PodSucceeded, map[string]string{"nvidia.com/gpu": "2"}),       // done: holds nothing
		pod("", corev1.PodPending, map[string]string{"nvidia.com/gpu": "1"}),          // not bound yet: waits for it
		pod("down", corev1.PodRunning, map[string]string{"nvidia.com/gpu": "1"}),      // on an unusable node
	}
	require.Equal(t, map[string]int{"nvidia.com/gpu": 3, "huawei.com/ascend-910b": 5}, FreeAccelerators(nodes, pods))
}
