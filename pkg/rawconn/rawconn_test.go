package rawconn_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/rawconn"
)

// pair returns a wrapped client connection and the server's end of it
// (plain), both on loopback.
func pair(t *testing.T) (*rawconn.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	s, ok := <-accepted
	require.True(t, ok)
	w, ok := rawconn.Wrap(c).(*rawconn.Conn)
	require.True(t, ok, "a TCP connection is wrapped")
	t.Cleanup(func() { w.Close(); s.Close() })
	return w, s
}

func TestReadWriteBothWays(t *testing.T) {
	c, s := pair(t)
	_, err := c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(s, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))

	_, err = s.Write([]byte("pong"))
	require.NoError(t, err)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, "pong", string(buf))

	n, err := c.Read(nil)
	assert.Equal(t, 0, n)
	assert.NoError(t, err, "an empty read returns at once")
}

// A write larger than the socket buffers waits on the poller until the
// peer reads, and delivers every byte in order.
func TestLargeWriteWaitsForThePeer(t *testing.T) {
	c, s := pair(t)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(s)
		got <- b
	}()
	n, err := c.Write(want)
	require.NoError(t, err)
	assert.Equal(t, len(want), n)
	require.NoError(t, c.CloseWrite(), "half-close: the peer reads EOF after the data")
	assert.True(t, bytes.Equal(want, <-got))
}

func TestPeerCloseReadsEOF(t *testing.T) {
	c, s := pair(t)
	_, err := s.Write([]byte("last"))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	b, err := io.ReadAll(c)
	require.NoError(t, err, "ReadAll ends on io.EOF")
	assert.Equal(t, "last", string(b))
	n, err := c.Read(make([]byte, 8))
	assert.Equal(t, 0, n)
	assert.Equal(t, io.EOF, err)
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	n, err := c.Read(make([]byte, 8))
	assert.Equal(t, 0, n)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "read", oe.Op, "named like net.Conn's errors, not RawConn's raw-read")
	assert.Equal(t, "tcp4", oe.Net, "the network as package net names it")

	// A deadline already past fails before any system call.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(-time.Second)))
	_, err = c.Read(make([]byte, 8))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

// A write to a peer that reads nothing fills the buffers, then fails at
// its deadline having written part.
func TestWriteDeadlineReportsWhatWasWritten(t *testing.T) {
	c, _ := pair(t)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(50*time.Millisecond)))
	n, err := c.Write(make([]byte, 64<<20))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.Greater(t, n, 0)
	assert.Less(t, n, 64<<20)
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "write", oe.Op)
}

// A reset reads as net.Conn's Read reports it: an *net.OpError around
// the system call's error, ECONNRESET.
func TestResetIsASyscallError(t *testing.T) {
	c, s := pair(t)
	require.NoError(t, s.(*net.TCPConn).SetLinger(0)) // close sends RST
	require.NoError(t, s.Close())
	var err error
	for err == nil { // the RST may follow an EOF-free read of nothing
		_, err = c.Read(make([]byte, 8))
	}
	require.ErrorIs(t, err, syscall.ECONNRESET)
	var se *os.SyscallError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "read", se.Syscall)
	assert.Equal(t, c.RemoteAddr().String(), err.(*net.OpError).Addr.String())

	_, err = c.Write([]byte("after the reset"))
	for err == nil {
		_, err = c.Write([]byte("after the reset"))
	}
	assert.True(t, errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET), "got %v", err)
}

// Close from another goroutine ends a read waiting on the poller with
// net.ErrClosed; later reads and writes fail the same way.
func TestCloseEndsAWaitingRead(t *testing.T) {
	c, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		done <- err
	}()
	// Whether the read is already waiting or not, it must end: a read
	// before the close waits on the poller, one after fails at once.
	runtime.Gosched()
	require.NoError(t, c.Close())
	assert.ErrorIs(t, <-done, net.ErrClosed)
	_, err := c.Write([]byte("x"))
	assert.ErrorIs(t, err, net.ErrClosed)
	_, err = c.Read(nil)
	assert.ErrorIs(t, err, net.ErrClosed, "an empty read on a closed connection fails, as on net.Conn")
}

func TestWrapLeavesWhatItCannotWrap(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.Same(t, a, rawconn.Wrap(a), "a pipe has no socket")

	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer u.Close()
	assert.Same(t, net.Conn(u), rawconn.Wrap(u), "a datagram socket keeps its own reads")
}

// A socket made blocking (os.File's Fd does that to the shared socket) is
// not wrapped: a raw read on it would stop the whole process.
func TestWrapLeavesABlockingSocket(t *testing.T) {
	if !rawconn.Raw {
		t.Skip("only raw system calls care")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	f, err := c.(*net.TCPConn).File()
	require.NoError(t, err)
	defer f.Close()
	_ = f.Fd() // makes the socket blocking
	assert.Same(t, c, rawconn.Wrap(c))
}

func TestWrapperKeepsTheSocketReachable(t *testing.T) {
	c, _ := pair(t)
	_, ok := c.NetConn().(*net.TCPConn)
	assert.True(t, ok)
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var fd uintptr
	require.NoError(t, rc.Control(func(f uintptr) { fd = f }))
	assert.NotZero(t, fd)
}

// The build decides the system call: raw on Linux outside -race.
func TestRawOnLinuxWithoutRace(t *testing.T) {
	assert.Equal(t, runtime.GOOS == "linux" && !raceEnabled, rawconn.Raw)
}

// Reads and writes allocate nothing: the functions the raw connection
// calls are bound once per connection.
func TestReadWriteAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	c, s := pair(t)
	msg, buf := []byte("0123456789"), make([]byte, 10)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := s.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// A read whose deadline passed makes one allocation, the error package net
// makes for it (renamed in place, not copied): an upstream that waits with
// short read deadlines (upstream.Conn.Wait) makes little garbage.
func TestTimedOutReadAllocatesOnlyItsError(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	c, _ := pair(t)
	buf := make([]byte, 1)
	var last error
	allocs := testing.AllocsPerRun(20, func() {
		if err := c.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		_, last = c.Read(buf)
	})
	assert.LessOrEqual(t, allocs, 1.0)
	var oe *net.OpError
	require.ErrorAs(t, last, &oe)
	assert.Equal(t, "read", oe.Op)
	assert.ErrorIs(t, last, os.ErrDeadlineExceeded)
}

// Concurrent reads (and writes) take turns, as on any net.Conn: every byte
// arrives once.
func TestConcurrentReadsAndWrites(t *testing.T) {
	c, s := pair(t)
	const writers, each = 4, 1000
	done := make(chan int, writers)
	for range writers {
		go func() {
			n := 0
			for range each {
				m, err := c.Write([]byte("abcd"))
				n += m
				if err != nil {
					break
				}
			}
			done <- n
		}()
	}
	got := make(chan int, 2)
	for range 2 {
		go func() {
			n, buf := 0, make([]byte, 3)
			for {
				m, err := s.Read(buf)
				n += m
				if err != nil {
					got <- n
					return
				}
			}
		}()
	}
	sent := 0
	for range writers {
		sent += <-done
	}
	assert.Equal(t, writers*each*4, sent)
	require.NoError(t, c.CloseWrite())
	assert.Equal(t, sent, <-got+<-got)

	// And the same the other way, raw reads in two goroutines.
	go func() {
		for range writers * each {
			if _, err := s.Write([]byte("abcd")); err != nil {
				return
			}
		}
		_ = s.Close()
	}()
	for range 2 {
		go func() {
			n, buf := 0, make([]byte, 3)
			for {
				m, err := c.Read(buf)
				n += m
				if err != nil {
					got <- n
					return
				}
			}
		}()
	}
	assert.Equal(t, writers*each*4, <-got+<-got)
}
