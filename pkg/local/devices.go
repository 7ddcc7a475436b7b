package local

import (
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
)

// devices hands the inventory's devices to replicas by what their replica
// set needs.
type devices struct {
	inv *autoscaler.Inventory

	mu    sync.Mutex
	needs map[fleet.Key]map[string]int
}

var _ process.Devices = (*devices)(nil)

func (d *devices) setNeed(key fleet.Key, need map[string]int) {
	d.mu.Lock()
	d.needs[key] = need
	d.mu.Unlock()
}

func (d *devices) Allocate(key fleet.Key, replica string) ([]string, error) {
	d.mu.Lock()
	need := d.needs[key]
	d.mu.Unlock()
	if len(need) == 0 {
		return nil, nil
	}
	alloc, err := d.inv.Allocate(replica, need)
	if err != nil {
		return nil, err
	}
	return autoscaler.VisibleDevicesEnv(alloc), nil
}

func (d *devices) Release(replica string) { d.inv.Release(replica) }

// acceleratorNeed is what one replica of a template takes: its extended
// resources (names with a domain, such as nvidia.com/gpu), from the
// cheapest accelerator variant when it has variants.
func acceleratorNeed(t v1alpha1.RevisionTemplate) map[string]int {
	res := t.Resources
	if len(t.Accelerators) > 0 {
		vs := slices.Clone(t.Accelerators)
		slices.SortStableFunc(vs, func(a, b v1alpha1.AcceleratorVariant) int {
			switch {
			case a.Cost < b.Cost:
				return -1
			case a.Cost > b.Cost:
				return 1
			}
			return 0
		})
		res = vs[0].Resources
	}
	need := map[string]int{}
	add := func(l corev1.ResourceList) {
		for name, q := range l {
			if n := string(name); strings.Contains(n, "/") && !strings.HasPrefix(n, "hugepages-") {
				need[n] = max(need[n], int(q.Value()))
			}
		}
	}
	add(res.Requests)
	add(res.Limits)
	if len(need) == 0 {
		return nil
	}
	return need
}
