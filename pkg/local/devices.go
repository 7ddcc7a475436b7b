package local

import (
	"fmt"
	"sync"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
)

// devices hands the inventory's devices to replicas by what their replica
// set's variant needs.
type devices struct {
	inv *autoscaler.Inventory

	mu       sync.Mutex
	variants map[fleet.Key][]autoscaler.Variant
}

var _ process.Devices = (*devices)(nil)

func (d *devices) setVariants(key fleet.Key, vs []autoscaler.Variant) {
	d.mu.Lock()
	d.variants[key] = vs
	d.mu.Unlock()
}

// Allocate implements process.Devices: a replica takes its variant's Need
// at once (a serving group's, for all its processes, or nothing), split
// evenly between its procs processes in rank order.
func (d *devices) Allocate(key fleet.Key, variant, replica string, procs int) ([][]string, error) {
	d.mu.Lock()
	vs := d.variants[key]
	d.mu.Unlock()
	for _, v := range vs {
		if v.Name != variant {
			continue
		}
		if len(v.Need) == 0 {
			return nil, nil
		}
		alloc, err := d.inv.Allocate(replica, v.Need)
		if err != nil {
			return nil, err
		}
		shares, err := autoscaler.SplitAllocation(alloc, procs)
		if err != nil {
			d.inv.Release(replica)
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		env := make([][]string, len(shares))
		for i, sh := range shares {
			env[i] = autoscaler.VisibleDevicesEnv(sh)
		}
		return env, nil
	}
	if variant == "" && len(vs) == 0 {
		return nil, nil
	}
	return nil, fmt.Errorf("%s has no accelerator variant %q", key, variant)
}

// Release implements process.Devices.
func (d *devices) Release(replica string) { d.inv.Release(replica) }
