// Package kvindex owns the router's view of which pods hold which prompt
// blocks in their engines' prefix caches: one Index per pool of pods (a
// revision role), fed by the KV events their queue-proxies stream
// (pkg/stats.KVEvent), plus short-lived speculative entries that a routing
// decision adds until the pod's own report arrives.
//
// The confirmed part of an Index is a pure function of the event streams, so
// every activator replica that follows the same queue-proxies holds the same
// index. Speculative entries are local to the replica that made the decision.
package kvindex
