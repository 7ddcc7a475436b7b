package rawconn

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Conn is a TCP connection whose Read and Write are raw system calls on its
// socket (see the package documentation). Everything else is the wrapped
// connection's.
type Conn struct {
	net.Conn
	rc syscall.RawConn
	// rd and wr hold the state of the read and of the write in progress,
	// for the functions syscall.RawConn calls: bound once, in Wrap, they
	// make a Read or Write allocate nothing.
	rd, wr op
}

// op is one direction's call in progress. Its mutex orders concurrent calls
// in the same direction, as the socket's own lock would.
type op struct {
	mu    sync.Mutex
	fn    func(fd uintptr) bool // read or write, bound to this op
	p     []byte
	n     int
	errno syscall.Errno
}

var _ net.Conn = (*Conn)(nil)

// Wrap returns c with raw reads and writes when it is a *net.TCPConn whose
// socket is non-blocking (as every socket of package net is), and c itself
// otherwise, or when the platform is not Unix. (A datagram socket, or a
// wrapper that buffers bytes of its own, must not have its reads replaced.)
//
// The wrapped connection must stay non-blocking: never call File on it
// (os.File's Fd makes the shared socket blocking, and a raw read on a
// blocking socket would stop the whole process, not only one thread).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !wraps || !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	nonblocking := false
	if rc.Control(func(fd uintptr) { nonblocking = isNonblocking(fd) }) != nil || !nonblocking {
		return c
	}
	w := &Conn{Conn: c, rc: rc}
	w.rd.fn, w.wr.fn = w.rd.read, w.wr.write
	return w
}

// Read reads like net.Conn's Read: at most len(p) bytes, blocking (on the
// poller, within the read deadline) until some arrive; io.EOF when the
// peer closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 { // nothing to read, but a closed connection still says so
		if err := c.rc.Read(func(uintptr) bool { return true }); err != nil {
			return 0, c.opError("read", err)
		}
		return 0, nil
	}
	if len(p) > maxRaw {
		p = p[:maxRaw]
	}
	o := &c.rd
	o.mu.Lock()
	o.p, o.n, o.errno = p, 0, 0
	err := c.rc.Read(o.fn)
	n, errno := o.n, o.errno
	o.p = nil
	o.mu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read is one attempt of a Read on fd: false (wait for the poller) when
// nothing is there yet.
func (o *op) read(fd uintptr) bool {
	o.n, o.errno = read(fd, o.p)
	for o.errno == syscall.EINTR {
		o.n, o.errno = read(fd, o.p)
	}
	return o.errno != syscall.EAGAIN
}

// Write writes all of p like net.Conn's Write, waiting on the poller
// (within the write deadline) while the socket's buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	o := &c.wr
	o.mu.Lock()
	o.p, o.n, o.errno = p, 0, 0
	err := c.rc.Write(o.fn)
	n, errno := o.n, o.errno
	o.p = nil
	o.mu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno == errWroteNothing:
		return n, c.opError("write", io.ErrUnexpectedEOF)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// write writes what is left of o.p to fd: false (wait for the poller) when
// the socket's buffer is full.
func (o *op) write(fd uintptr) bool {
	for o.n < len(o.p) {
		chunk := o.p[o.n:]
		if len(chunk) > maxRaw {
			chunk = chunk[:maxRaw]
		}
		m, e := write(fd, chunk)
		switch {
		case e == 0 && m == 0: // as internal/poll: never loop on nothing written
			o.errno = errWroteNothing
			return true
		case e == 0:
			o.n += m
		case e == syscall.EINTR:
		case e == syscall.EAGAIN:
			return false
		default:
			o.errno = e
			return true
		}
	}
	return true
}

// errWroteNothing marks a write(2) that wrote nothing and reported no
// error; Write reports io.ErrUnexpectedEOF for it, as internal/poll does.
const errWroteNothing = ^syscall.Errno(0)

// maxRaw is the most one raw system call reads or writes. A goroutine in a
// raw call keeps its P and cannot be stopped for a collection, so a large
// buffer goes in pieces: a loopback write of 64 MiB at once took 3-15 ms,
// one of 256 KiB takes well under one.
const maxRaw = 256 << 10

// opError is err as net.Conn's Read and Write report it: a *net.OpError
// naming the operation and the connection's addresses. An error of
// syscall.RawConn is one already, saying "raw-read" or "raw-write": only
// its Op changes, in place (package net makes a new one for every failed
// call, and no one else holds it), so that a read deadline passing (the
// upstream's idle check, every interval of every stream) makes one
// allocation, not two.
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
		return oe
	}
	e := &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	if e.Source != nil {
		e.Net = e.Source.Network()
	}
	return e
}

// NetConn returns the wrapped connection (as crypto/tls.Conn's does).
func (c *Conn) NetConn() net.Conn { return c.Conn }

// SyscallConn returns the wrapped socket's raw connection.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// CloseWrite shuts down the writing side of the connection, when the
// wrapped connection can (a TCP connection can).
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
