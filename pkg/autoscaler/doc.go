// Package autoscaler owns Kvasir's scaling decisions, shared by local mode
// and Kubernetes: the Decider turns LLM signals (demand seen by activators,
// engines' waiting queues, KV-cache usage, token throughput) into a desired
// replica count with Knative KPA mechanics (stable and panic windows,
// rates, scale-to-zero grace), and Place spreads replicas over accelerator
// variants by cost within what is free.
//
// Pass is the one scaling pass both runtimes run: observe every role →
// Decide → CoupleAll (prefill follows decode) → order by Priority → Place
// → apply. A runtime supplies where roles are observed (Observer), what is
// free (Capacity: local mode's Inventory, or a Pool counted from the
// nodes), how a placement is applied (a fleet.VariantScaler) and how what
// the pass did is reported (Reporter).
package autoscaler
