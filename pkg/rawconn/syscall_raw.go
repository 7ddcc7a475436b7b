//go:build linux && !race && !msan && !asan

package rawconn

import (
	"syscall"
	"unsafe"
)

// Raw reports whether this build reads and writes with raw system calls.
const Raw = true

// wraps reports whether Wrap wraps connections at all.
const wraps = true

// read is read(2) on the non-blocking socket fd, as a raw system call:
// it does not block, so the runtime need not know it is in the kernel.
func read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// write is write(2) on the non-blocking socket fd, as a raw system call.
func write(fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), 0
}

// isNonblocking reports whether the socket fd has O_NONBLOCK set.
func isNonblocking(fd uintptr) bool {
	flags, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	return e == 0 && flags&syscall.O_NONBLOCK != 0
}
