package autoscaler

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Variant is one way to place a replica of a replica set, as placement
// sees it: what one replica takes, what it costs, and how many run on it
// now. A replica set without accelerator variants is one unnamed variant.
type Variant struct {
	Name string
	// Need is the accelerators one replica takes (resource name → count),
	// those of all its pods for a serving group; empty: it takes none and
	// always fits.
	Need map[string]int
	// Pods is the pods (local mode: engine processes) of one replica: a
	// serving group's size, or 1 (0 counts as 1). Need is theirs together,
	// placed whole or not at all.
	Pods int
	Cost float64
	// Current is how many replicas run (or start) on this variant now.
	Current int
}

// Placement is where n replicas go.
type Placement struct {
	// Counts per variant, in the order given.
	Counts []int
	// Unplaceable is how many of the n wanted fit nowhere.
	Unplaceable int
	// Missing names the resources that ran out, sorted, when Unplaceable
	// is not zero.
	Missing []string
}

// Total is the sum of Counts.
func (p Placement) Total() int {
	n := 0
	for _, c := range p.Counts {
		n += c
	}
	return n
}

// Message says what is missing, for conditions and events.
func (p Placement) Message() string {
	if p.Unplaceable == 0 {
		return ""
	}
	return fmt.Sprintf("%d replica(s) cannot be placed: not enough free %s", p.Unplaceable, strings.Join(p.Missing, ", "))
}

// Place spreads n replicas over variants. free is the capacity not held by
// any replica (resource → free units); a resource it lacks has none.
// Replicas that run keep their variant (no migration). Growth fills the
// cheapest variant that has room first and spills to the next; shrinking
// removes replicas from the most expensive variant first. Ties in cost
// keep the order given. free is not modified.
func Place(variants []Variant, free map[string]int, n int) Placement {
	p := Placement{Counts: make([]int, len(variants))}
	current := 0
	for i, v := range variants {
		p.Counts[i] = v.Current
		current += v.Current
	}
	byCost := make([]int, len(variants))
	for i := range byCost {
		byCost[i] = i
	}
	slices.SortStableFunc(byCost, func(a, b int) int { return cmp.Compare(variants[a].Cost, variants[b].Cost) })

	if n <= current {
		drop := current - n
		for j := len(byCost) - 1; j >= 0 && drop > 0; j-- {
			i := byCost[j]
			k := min(drop, p.Counts[i])
			p.Counts[i] -= k
			drop -= k
		}
		return p
	}
	left := maps.Clone(free)
	grow := n - current
	missing := map[string]bool{}
	for _, i := range byCost {
		for grow > 0 {
			lacking := ""
			for _, res := range slices.Sorted(maps.Keys(variants[i].Need)) {
				if need := variants[i].Need[res]; need > 0 && left[res] < need {
					lacking = res
					break
				}
			}
			if lacking != "" {
				missing[lacking] = true
				break
			}
			for res, need := range variants[i].Need {
				left[res] -= need
			}
			p.Counts[i]++
			grow--
		}
	}
	if grow > 0 {
		p.Unplaceable = grow
		p.Missing = slices.Sorted(maps.Keys(missing))
	}
	return p
}

// Priority orders replica sets within one placement pass: those shrinking
// first (they free accelerators), then those waking from zero (first
// claim on what is free, so a model at zero is not starved by others
// growing), then the rest.
func Priority(current, desired int) int {
	switch {
	case desired < current:
		return 0
	case current == 0 && desired > 0:
		return 1
	}
	return 2
}
