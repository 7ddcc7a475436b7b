package autoscaling

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
)

// FreeAccelerators sums the allocatable accelerators (extended resources)
// of the nodes that take pods (Ready, not cordoned) and subtracts what pods
// request: those bound to these nodes, and those not bound yet (they are
// waiting for that capacity). Finished pods and pods on nodes that take
// none hold nothing. The sum is over nodes: a replica needing several
// devices on one node may still not fit a fragmented pool (its pod then
// shows as Unschedulable).
func FreeAccelerators(nodes []corev1.Node, pods []corev1.Pod) map[string]int {
	free := map[string]int{}
	usable := map[string]bool{}
	for _, n := range nodes {
		if n.Spec.Unschedulable || !nodeReady(n) {
			continue
		}
		usable[n.Name] = true
		for name, q := range n.Status.Allocatable {
			if autoscaler.IsAccelerator(string(name)) {
				free[string(name)] += int(q.Value())
			}
		}
	}
	for _, p := range pods {
		if (p.Spec.NodeName != "" && !usable[p.Spec.NodeName]) || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for res, n := range podAccelerators(&p) {
			free[res] -= n
		}
	}
	for res, n := range free {
		free[res] = max(n, 0)
	}
	return free
}

func nodeReady(n corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podAccelerators is what a pod takes of accelerators: the sum over its
// containers (init containers run one at a time: the largest of them, if
// larger).
func podAccelerators(p *corev1.Pod) map[string]int {
	out := map[string]int{}
	for _, c := range p.Spec.Containers {
		for res, n := range autoscaler.AcceleratorNeed(c.Resources) {
			out[res] += n
		}
	}
	for _, c := range p.Spec.InitContainers {
		for res, n := range autoscaler.AcceleratorNeed(c.Resources) {
			out[res] = max(out[res], n)
		}
	}
	return out
}
