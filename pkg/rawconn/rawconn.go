package rawconn

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Conn is a TCP connection whose Read and Write are raw system calls on its
// socket (see the package documentation). Everything else is the wrapped
// connection's.
type Conn struct {
	net.Conn
	rc syscall.RawConn
}

var _ net.Conn = (*Conn)(nil)

// Wrap returns c with raw reads and writes, or c itself when it is not a
// socket the runtime polls (what Wrap needs: a syscall.Conn; *net.TCPConn
// is one) or the platform is not Unix.
func Wrap(c net.Conn) net.Conn {
	if !wraps {
		return c
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &Conn{Conn: c, rc: rc}
}

// Read reads like net.Conn's Read: at most len(p) bytes, blocking (on the
// poller, within the read deadline) until some arrive; io.EOF when the
// peer closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxRW {
		p = p[:maxRW]
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		n, errno = read(fd, p)
		for errno == syscall.EINTR {
			n, errno = read(fd, p)
		}
		return errno != syscall.EAGAIN
	})
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

// Write writes all of p like net.Conn's Write, waiting on the poller
// (within the write deadline) while the socket's buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			chunk := p[n:]
			if len(chunk) > maxRW {
				chunk = chunk[:maxRW]
			}
			m, e := write(fd, chunk)
			switch e {
			case 0:
				n += m
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// maxRW is the most one system call reads or writes, as in internal/poll.
const maxRW = 1 << 30

// opError is err as net.Conn's Read and Write report it: a *net.OpError
// naming the operation and the connection's addresses (syscall.RawConn's
// own errors say "raw-read" and "raw-write").
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
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
