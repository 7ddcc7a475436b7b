package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
)

// packRole is one replica set as the exhaustive packing sees it: the ways
// one of its groups can be placed (autoscaler.Variant: Need is the whole
// group's, split evenly over Pods pods).
type packRole struct {
	Name     string
	Variants []autoscaler.Variant
}

// node is one node's free accelerators (resource → devices). local mode's
// machine, and the count model of autoscaler.Place, is one node holding
// the whole inventory.
type node map[string]int

// packing is a placement of groups: Counts[r][v] groups of role r on its
// variant v.
type packing struct {
	Counts [][]int
	// Used is the accelerators the groups take, Groups how many there are.
	Used, Groups int
}

// maxLeaves bounds the exhaustive search: the placements it may look at.
const maxLeaves = 2_000_000

// errTooLarge: the search space is beyond maxLeaves.
var errTooLarge = errors.New("too many placements for an exhaustive search: make the inventory or the demand smaller")

// bestPacking returns, among every placement of at most demand[r] groups of
// each role r (and, with floor, at least floor[r][v] on each variant v)
// whose pods all fit the nodes, one that uses the most accelerators, and
// of those one with the most groups. It looks at every placement (small
// inventories only: errTooLarge beyond maxLeaves). ok is false when not
// even the floor fits. A negative demand counts as 0; a variant with Pods
// below 1 has one pod.
func bestPacking(nodes []node, roles []packRole, demand []int, floor [][]int) (best packing, ok bool, err error) {
	if len(demand) != len(roles) || (floor != nil && len(floor) != len(roles)) {
		return packing{}, false, fmt.Errorf("%d roles, %d demands, %d floors", len(roles), len(demand), len(floor))
	}
	if err := searchable(roles, demand); err != nil {
		return packing{}, false, err
	}
	total := node{}
	for _, n := range nodes {
		for res, c := range n {
			total[res] += max(c, 0)
		}
	}
	counts := make([][]int, len(roles))
	for r := range roles {
		counts[r] = make([]int, len(roles[r].Variants))
	}
	// The slots are every (role, variant), in order.
	type slot struct{ r, v int }
	var slots []slot
	for r := range roles {
		for v := range roles[r].Variants {
			slots = append(slots, slot{r, v})
		}
	}
	floorOf := func(r, v int) int {
		if floor == nil || v >= len(floor[r]) {
			return 0
		}
		return max(floor[r][v], 0)
	}
	left := node{}
	maps.Copy(left, total)
	leaves := 0
	best.Used = -1
	var walk func(i int) error
	walk = func(i int) error {
		if i == len(slots) {
			if leaves++; leaves > maxLeaves {
				return errTooLarge
			}
			used, groups := usage(roles, counts)
			if used < best.Used || (used == best.Used && groups <= best.Groups) {
				return nil
			}
			if fits(nodes, roles, counts) {
				best = packing{Counts: clone2(counts), Used: used, Groups: groups}
			}
			return nil
		}
		s := slots[i]
		v := roles[s.r].Variants[s.v]
		placed := 0
		for w := range counts[s.r] {
			if w < s.v {
				placed += counts[s.r][w]
			}
		}
		room := max(demand[s.r], 0) - placed
		lo := floorOf(s.r, s.v)
		// The floor of the role's later variants must still fit in its
		// demand.
		later := 0
		for w := s.v + 1; w < len(roles[s.r].Variants); w++ {
			later += floorOf(s.r, w)
		}
		for c := lo; c <= room-later; c++ {
			if !take(left, v.Need, c) {
				break
			}
			counts[s.r][s.v] = c
			err := walk(i + 1)
			take(left, v.Need, -c)
			counts[s.r][s.v] = 0
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(0); err != nil {
		return packing{}, false, err
	}
	if best.Used < 0 {
		return packing{}, false, nil
	}
	return best, true, nil
}

// maxPods bounds the pods one placement may have: each leaf of the search
// may try every assignment of them to nodes.
const maxPods = 4096

// searchable refuses, before any search, a demand whose placements (the
// count vectors within it, per role) are more than maxLeaves, or whose
// pods are more than maxPods.
func searchable(roles []packRole, demand []int) error {
	leaves, pods := 1.0, 0.0
	for r, role := range roles {
		d := float64(max(demand[r], 0))
		// Vectors of len(Variants) counts summing to at most d:
		// C(d + V, V).
		c := 1.0
		for k := 1; k <= len(role.Variants); k++ {
			c = c * (d + float64(k)) / float64(k)
		}
		leaves *= c
		most := 1
		for _, v := range role.Variants {
			most = max(most, v.Pods)
		}
		pods += d * float64(most)
	}
	if leaves > maxLeaves || pods > maxPods {
		return fmt.Errorf("%w (%.3g placements, up to %.3g pods)", errTooLarge, leaves, pods)
	}
	return nil
}

// take takes c groups' need from left when it has room (c < 0 gives
// back), and reports whether it did.
func take(left node, need map[string]int, c int) bool {
	for res, n := range need {
		if c > 0 && left[res] < n*c {
			return false
		}
	}
	for res, n := range need {
		left[res] -= n * c
	}
	return true
}

// usage is the accelerators and the groups of a placement.
func usage(roles []packRole, counts [][]int) (used, groups int) {
	for r, row := range counts {
		for v, c := range row {
			groups += c
			for _, n := range roles[r].Variants[v].Need {
				used += n * c
			}
		}
	}
	return used, groups
}

func clone2(a [][]int) [][]int {
	out := make([][]int, len(a))
	for i := range a {
		out[i] = slices.Clone(a[i])
	}
	return out
}

// pods lists the pods of a placement, each with what it takes: a group's
// Need split evenly over its pods (a remainder goes to its first pod).
func pods(roles []packRole, counts [][]int) []map[string]int {
	var out []map[string]int
	for r, row := range counts {
		for v, c := range row {
			variant := roles[r].Variants[v]
			n := max(variant.Pods, 1)
			for range c {
				for p := range n {
					pod := map[string]int{}
					for res, need := range variant.Need {
						share := need / n
						if p == 0 {
							share += need % n
						}
						if share > 0 {
							pod[res] = share
						}
					}
					out = append(out, pod)
				}
			}
		}
	}
	return out
}

// fits reports whether every pod of a placement fits on some node, each
// pod whole on one node, trying every assignment.
func fits(nodes []node, roles []packRole, counts [][]int) bool {
	ps := pods(roles, counts)
	size := func(p map[string]int) int {
		s := 0
		for _, n := range p {
			s += n
		}
		return s
	}
	slices.SortStableFunc(ps, func(a, b map[string]int) int { return size(b) - size(a) })
	left := make([]node, len(nodes))
	for i, n := range nodes {
		left[i] = maps.Clone(n)
	}
	var place func(i int) bool
	place = func(i int) bool {
		if i == len(ps) {
			return true
		}
		tried := map[string]bool{} // nodes with the same room are one choice
		for _, n := range left {
			key := nodeKey(n)
			if tried[key] || !take(n, ps[i], 1) {
				continue
			}
			tried[key] = true
			ok := place(i + 1)
			take(n, ps[i], -1)
			if ok {
				return true
			}
		}
		return false
	}
	return place(0)
}

func nodeKey(n node) string {
	var b strings.Builder
	for _, res := range slices.Sorted(maps.Keys(n)) {
		fmt.Fprintf(&b, "%s=%d,", res, n[res])
	}
	return b.String()
}

// countModel is the inventory as autoscaler.Place sees it: one node with
// every device of every resource.
func countModel(nodes []node) []node {
	total := node{}
	for _, n := range nodes {
		for res, c := range n {
			total[res] += c
		}
	}
	return []node{total}
}
