package cli

import (
	"flag"
	"fmt"
	"strconv"

	"github.com/kvasir-serving/kvasir/activator"
)

// RegisterQueueFlags binds the activator's fair queueing settings to flags:
// when a replica counts as saturated, so that requests wait in the
// activator's fair queue (by priority class, then by tenant under
// contention) rather than in its engine's first-come queue. Both
// thresholds are off by default; containerConcurrency alone saturates.
func RegisterQueueFlags(fs *flag.FlagSet, c *activator.Config) {
	fs.IntVar(&c.SaturationWaiting, "saturation-waiting", c.SaturationWaiting,
		"also count a replica as saturated while its engine's waiting queue (as last reported, plus the requests "+
			"handed to it since, less those that finished) is at or above this (0: off)")
	fs.Float64Var(&c.SaturationKVUsage, "saturation-kv-usage", c.SaturationKVUsage,
		"also count a replica as saturated while its engine's KV-cache usage, 0..1 (as last reported, plus the "+
			"estimated tokens handed to it since), is at or above this (0: off)")
	fs.IntVar(&c.PriorityHeadroom, "priority-headroom", c.PriorityHeadroom,
		"slots of each replica's containerConcurrency kept for critical requests and for tenants under their share "+
			"of the replicas, so that they start at once while heavier tenants wait (0: off; at most containerConcurrency-1; "+
			"nothing is kept for the open API, or while one tenant alone uses a revision)")
	fs.BoolFunc("fair-queueing", "release waiting requests by tenant priority and fair share (default true); false: "+
		"one first-come, first-served line for every tenant, the baseline to compare with", func(v string) error {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("want true or false: %w", err)
		}
		c.FirstComeFirstServed = !on
		return nil
	})
}
