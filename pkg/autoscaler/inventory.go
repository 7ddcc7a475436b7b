package autoscaler

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Inventory is one machine's accelerators for local mode: per extended
// resource name (nvidia.com/gpu, huawei.com/ascend-910b, ...), devices
// 0..n-1, each held by at most one replica. It is safe for concurrent use.
type Inventory struct {
	mu     sync.Mutex
	owners map[string][]string         // resource → owner per device index ("" = free)
	held   map[string]map[string][]int // replica → resource → device indices
}

// ParseInventory reads "name=count,name=count".
func ParseInventory(s string) (*Inventory, error) {
	inv := &Inventory{owners: map[string][]string{}, held: map[string]map[string][]int{}}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, count, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(count)
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("%q: want resource=count", part)
		case err != nil || n < 0:
			return nil, fmt.Errorf("%q: count must be a non-negative integer", part)
		case !strings.Contains(name, "/"):
			return nil, fmt.Errorf("%q: an accelerator is an extended resource such as nvidia.com/gpu", part)
		}
		if _, dup := inv.owners[name]; dup {
			return nil, fmt.Errorf("%q: %s given twice", part, name)
		}
		inv.owners[name] = make([]string, n)
	}
	return inv, nil
}

// Resources lists the inventory's resource names, sorted.
func (inv *Inventory) Resources() []string {
	return slices.Sorted(maps.Keys(inv.owners))
}

// Free returns the free devices per resource.
func (inv *Inventory) Free() map[string]int {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	free := make(map[string]int, len(inv.owners))
	for res, owners := range inv.owners {
		for _, o := range owners {
			if o == "" {
				free[res]++
			}
		}
		if _, ok := free[res]; !ok {
			free[res] = 0
		}
	}
	return free
}

// Allocate reserves devices for a replica.
func (inv *Inventory) Allocate(replica string, need map[string]int) (map[string][]int, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	got := map[string][]int{}
	for _, res := range slices.Sorted(maps.Keys(need)) {
		n := need[res]
		for i, o := range inv.owners[res] {
			if len(got[res]) == n {
				break
			}
			if o == "" {
				got[res] = append(got[res], i)
			}
		}
		if len(got[res]) < n {
			return nil, fmt.Errorf("%s: %d free of %d, the replica needs %d", res, len(got[res]), len(inv.owners[res]), n)
		}
	}
	for res, idx := range got {
		for _, i := range idx {
			inv.owners[res][i] = replica
		}
	}
	inv.held[replica] = got
	return got, nil
}

// Release frees a replica's devices.
func (inv *Inventory) Release(replica string) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	for res, idx := range inv.held[replica] {
		for _, i := range idx {
			if inv.owners[res][i] == replica {
				inv.owners[res][i] = ""
			}
		}
	}
	delete(inv.held, replica)
}

// SplitAllocation splits a replica's devices between its procs engine
// processes (a serving group's pods, in rank order): each gets an equal,
// consecutive share of every resource. It fails when procs is below 1 or a
// resource does not split evenly.
func SplitAllocation(alloc map[string][]int, procs int) ([]map[string][]int, error) {
	if procs < 1 {
		return nil, fmt.Errorf("%d processes: want at least 1", procs)
	}
	out := make([]map[string][]int, procs)
	for i := range out {
		out[i] = map[string][]int{}
	}
	for _, res := range slices.Sorted(maps.Keys(alloc)) {
		idx := alloc[res]
		if len(idx)%procs != 0 {
			return nil, fmt.Errorf("%s: %d devices do not split evenly over %d processes", res, len(idx), procs)
		}
		share := len(idx) / procs
		for i := range out {
			if share > 0 {
				out[i][res] = slices.Clone(idx[i*share : (i+1)*share])
			}
		}
	}
	return out, nil
}

// VisibleDevicesEnv tells an engine which devices are its own, in the
// variables the vendors' runtimes read.
func VisibleDevicesEnv(alloc map[string][]int) []string {
	var env []string
	for _, res := range slices.Sorted(maps.Keys(alloc)) {
		ids := make([]string, len(alloc[res]))
		for i, d := range alloc[res] {
			ids[i] = strconv.Itoa(d)
		}
		list := strings.Join(ids, ",")
		switch {
		case res == "nvidia.com/gpu":
			env = append(env, "CUDA_VISIBLE_DEVICES="+list)
		case res == "amd.com/gpu":
			env = append(env, "ROCR_VISIBLE_DEVICES="+list, "HIP_VISIBLE_DEVICES="+list)
		case strings.HasPrefix(res, "huawei.com/ascend"):
			env = append(env, "ASCEND_RT_VISIBLE_DEVICES="+list)
		default:
			env = append(env, "KVASIR_VISIBLE_DEVICES="+list)
		}
	}
	return env
}
