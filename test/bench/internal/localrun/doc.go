// Package localrun runs `kvasir local` for a benchmark program under
// test/bench: it builds the kvasir binary when none is given, starts the
// platform on loopback ports with its logs in a directory, tells when it
// exits on its own, reads its /kvasir/replicas and waits for a condition
// on them, and stops it (SIGTERM, then SIGKILL after a bound). A Workdir
// holds a benchmark's temporary directory (the binary it built, the files
// it writes) and its log directory, stops the platforms started in it, and
// removes what is not the user's, keeping the logs of a failed run. It does
// no I/O of its own beyond those processes, their log files, those
// directories and the platforms' admin endpoints.
package localrun
