//go:build linux || darwin

package httpserver

import (
	"net"
	"sync"
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
//
// It allocates nothing on a connection that keeps its syscall.RawConn (as
// rawconn.Conn does, under the listener's wrapper): the activator calls it
// every check interval for every request in flight, and a stream that
// waits idle must not make garbage while it waits (2,000 streams with no
// collection in between hold every byte of it).
func PeerClosed(c net.Conn) bool {
	sc, ok := syscallConn(c)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	p := peeks.Get().(*peek)
	p.closed = false
	err = rc.Control(p.fn)
	closed := p.closed
	peeks.Put(p)
	return closed || err != nil
}

// syscallConn returns the outermost connection that gives its socket in
// c's chain of wrappers (those that say what they wrap with a NetConn
// method, as this package's, rawconn's and crypto/tls's do): rawconn.Conn
// keeps its syscall.RawConn, where *net.TCPConn makes a new one per call.
func syscallConn(c net.Conn) (syscall.Conn, bool) {
	for range 8 {
		if sc, ok := c.(syscall.Conn); ok {
			return sc, true
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil, false
		}
		c = u.NetConn()
	}
	return nil, false
}

// peek is one PeerClosed call's state, for syscall.RawConn.Control: its
// function is bound once, so that a call allocates nothing.
type peek struct {
	closed bool
	fn     func(fd uintptr)
}

func (p *peek) run(fd uintptr) { p.closed = peekClosed(fd) }

var peeks = sync.Pool{New: func() any {
	p := new(peek)
	p.fn = p.run
	return p
}}
