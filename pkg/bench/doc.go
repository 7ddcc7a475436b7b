// Package bench owns Kvasir's load generator, `kvasir bench run`: the
// workloads it sends (random, generated-shared-prefix, multi-turn), the load
// shape (open-loop Poisson or constant arrivals, or closed loop, under an
// optional in-flight cap), the HTTP client that measures each request against
// an OpenAI-compatible server (TTFT, inter-token latency, end-to-end latency,
// token usage and prefix-cache hits), and the summary it reports as a table
// and as JSON.
//
// A run is built from a Config (flags bound by RegisterFlags, checked once by
// Validate). Run sends the optional warm-up requests, then the measured ones,
// and returns a Result. Request bodies are rendered before the measured run
// starts wherever the workload allows it (multi-turn bodies depend on the
// answers received and are rendered as each turn becomes ready).
//
// With tenants (Config.Tenants), each tenant runs its own requests at once
// with its own key, load shape and workload, and the Result has a row per
// tenant: its refusals by status, its tokens served and their share, and its
// backlogged share, the share of the tokens served while every tenant had a
// request waiting for its first token (backlog.go), which is what a fair
// scheduler splits evenly.
//
// Compare (`kvasir bench compare`) runs one workload per Strategy, each on a
// fresh fleet that a Launcher starts (LocalFleets: `kvasir local`
// in-process): a strategy sets the fleet's routing plugins and engine
// fields, extra flags of `kvasir local` (Strategy.Args, verbatim), and which
// of the workload's tenants run (Strategy.Tenants).
package bench
