// Package benchkit holds what the benchmark programs under test/bench share:
// dispatching a subcommand, free loopback ports, waiting (on a context, or
// for a URL to answer), reading a platform's /kvasir/replicas, and reading
// a process's memory from /proc. Their /metrics pages are read with
// pkg/testing/promtest.
package benchkit
