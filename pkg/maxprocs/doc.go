// Package maxprocs fits the Go runtime's GOMAXPROCS to the CPU a process
// actually uses, between one P and the runtime's own default.
//
// A proxy hop on Go pays for idle Ps: every time a goroutine becomes
// runnable while another P is idle, the scheduler wakes a thread to spin
// for work, finds none and parks it again (futex wake-ups and spinning
// that show up as CPU per request at moderate load). On one P that
// hand-off does not happen. Measured on the queue-proxy at 1,000 req/s,
// one P spent 10-13% less CPU per request than two, with the same latency
// (docs/benchmarks.md). One P is also a ceiling, so Run reads the
// process's CPU time (getrusage) every interval and gives it more Ps as
// soon as its use asks for them, and takes them back only after the use
// has stayed low for a while.
//
// Run does nothing when the operator set GOMAXPROCS in the environment,
// which stays the way to pin it.
package maxprocs
