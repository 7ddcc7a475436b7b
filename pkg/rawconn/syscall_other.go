//go:build !unix

package rawconn

import "syscall"

// Raw reports whether this build reads and writes with raw system calls.
const Raw = false

// Outside Unix, Wrap leaves connections as they are.
const wraps = false

func read(uintptr, []byte) (int, syscall.Errno)  { return 0, syscall.EINVAL }
func write(uintptr, []byte) (int, syscall.Errno) { return 0, syscall.EINVAL }

func isNonblocking(uintptr) bool { return false }
