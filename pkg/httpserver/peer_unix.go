//go:build linux || darwin

package httpserver

import (
	"net"
	"syscall"
	"unsafe"
)

// PeerClosed reports whether the peer of c closed its side of the
// connection, or the connection broke (reset, or closed here). It looks
// without consuming anything and without blocking: one recv with MSG_PEEK
// and MSG_DONTWAIT on the socket. A peer that sent more bytes (a pipelined
// request) is not closed as far as PeerClosed can tell, nor is one on a
// connection that is not a socket (false). A half-close (the client shut
// its writing side down) reads as closed, as it does to net/http, which
// cancels the request then.
func PeerClosed(c net.Conn) bool {
	sc, ok := unwrapConn(c).(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	err = rc.Control(func(fd uintptr) {
		// recv(2) straight, without syscall.Recvfrom's address buffer: the
		// check runs deep in a request's stack, which every stream keeps.
		var b [1]byte
		n, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			closed = n == 0 // EOF: the peer shut its side down
		case syscall.EAGAIN, syscall.EINTR:
		default:
			closed = true // reset, or another failure: nothing more will come
		}
	})
	return closed || err != nil
}
