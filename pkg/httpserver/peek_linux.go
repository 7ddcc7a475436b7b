//go:build linux && !386

package httpserver

import (
	"syscall"
	"unsafe"
)

// peekClosed peeks one byte of the socket fd without consuming it or
// waiting: true when the peer shut its side down or the socket failed.
// It is recv(2) straight, without syscall.Recvfrom's address buffer: the
// check runs at the deepest point of a waiting request, whose stack every
// stream then keeps. It never blocks (MSG_DONTWAIT), so it is a raw system
// call, which spares the runtime's bookkeeping for one that may (see
// pkg/rawconn). (linux/386 has no recvfrom system call of its own:
// peek_recvfrom.go.)
func peekClosed(fd uintptr) bool {
	var b [1]byte
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0:
		return n == 0 // EOF: the peer shut its side down
	case syscall.EAGAIN, syscall.EINTR:
		return false
	default:
		return true // reset, or another failure: nothing more will come
	}
}
