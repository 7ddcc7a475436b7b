package scheduler

// Plugin names.
const (
	Random       = "random"
	RoundRobin   = "round-robin"
	LeastRequest = "least-request"
	KVCacheUsage = "kv-cache-usage"
	PrefixCache  = "prefix-cache"
	KVCacheAware = "kv-cache-aware"
	LoRAAffinity = "lora-affinity"
	Oracle       = "oracle"
)

// DefaultRegistry is the one place plugins are registered.
func DefaultRegistry() Registry {
	return Registry{
		Random:       newRandom,
		RoundRobin:   newRoundRobin,
		LeastRequest: newLeastRequest,
		KVCacheUsage: newKVCacheUsage,
		PrefixCache:  newPrefixCache,
		KVCacheAware: newKVCacheAware,
		LoRAAffinity: newLoRAAffinity,
		Oracle:       newOracle,
	}
}
