//go:build linux || darwin

package httpserver

import (
	"errors"
	"net"
	"syscall"
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
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == nil:
			closed = n == 0 // EOF: the peer shut its side down
		case errors.Is(rerr, syscall.EAGAIN), errors.Is(rerr, syscall.EWOULDBLOCK), errors.Is(rerr, syscall.EINTR):
		default:
			closed = true // reset, or another failure: nothing more will come
		}
		return true // never wait for readiness
	})
	return closed || err != nil
}
