// Package rawconn wraps a TCP connection so that its reads and writes go
// to the kernel as raw system calls, without the Go runtime's bookkeeping
// for a system call that may block.
//
// A read or write on a Go socket is a non-blocking system call (the
// runtime's poller waits for readiness), yet the runtime enters and leaves
// it as one that may block: it hands its processor off for the duration
// and, when the process was idle, wakes its monitor thread (sysmon), which
// then polls every 20 µs until the process is idle again. For a proxy that
// handles one short request at a time, that is about a third of its CPU
// per request on the project's 2-core test machine (docs/benchmarks.md,
// "Raw system calls"). Conn keeps the poller, deadlines and errors of the
// connection it wraps (through syscall.RawConn) and changes only the call
// at the bottom: on Linux, outside race-detector (and msan/asan) builds,
// syscall.RawSyscall of read(2) and write(2) on the non-blocking socket,
// which returns at once (EAGAIN when it would block, and the poller
// waits), at most 256 KiB a call. Elsewhere, and with -race (whose
// happens-before edges through I/O syscall.Read and syscall.Write record),
// the same wrapper calls those.
package rawconn
