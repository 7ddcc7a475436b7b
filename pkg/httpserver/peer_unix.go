//go:build linux || darwin

package httpserver

import (
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
	err = rc.Control(func(fd uintptr) { closed = peekClosed(fd) })
	return closed || err != nil
}
