//go:build unix && (!linux || race || msan || asan)

package rawconn

import (
	"errors"
	"syscall"
)

// Raw reports whether this build reads and writes with raw system calls.
const Raw = false

// wraps reports whether Wrap wraps connections at all.
const wraps = true

// read is syscall.Read: the runtime's own system call, which the race
// detector sees (a happens-before edge from every write to every read).
func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	return n, errnoOf(err)
}

// write is syscall.Write (see read).
func write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	return n, errnoOf(err)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}

// isNonblocking: a blocking socket costs only a thread here, as on any
// net.Conn.
func isNonblocking(uintptr) bool { return true }
