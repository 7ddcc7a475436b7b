// Package localrun runs `kvasir local` for a benchmark program under
// test/bench: it builds the kvasir binary when none is given, starts the
// platform on loopback ports with its logs in a directory, tells when it
// exits on its own, reads its /kvasir/replicas, and stops it (SIGTERM, then
// SIGKILL after a bound). It does no I/O of its own beyond that process,
// its log file and the platform's admin endpoint.
package localrun
