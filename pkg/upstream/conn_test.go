package upstream

import (
	"bufio"
	"io"
	"net"
	"net/textproto"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lineServer answers each line it reads with the line, after release yields
// (one value per line), and counts its connections.
func lineServer(t *testing.T, release <-chan struct{}) (addr string, conns *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	conns = new(atomic.Int32)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if release != nil {
						<-release
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), conns
}

func roundTrip(t *testing.T, c *Conn, line string, w Watcher) error {
	t.Helper()
	_, _ = c.Writer().WriteString(line)
	require.NoError(t, c.Flush())
	if err := c.Wait(time.Now().Add(10*time.Second), w); err != nil {
		return err
	}
	got, err := c.Reader().ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, line, got)
	return nil
}

func TestPoolReusesConnections(t *testing.T) {
	addr, conns := lineServer(t, nil)
	p := NewPool(addr, nil, NewWatchdog(10*time.Millisecond))
	for i := range 3 {
		c, err := p.Get(time.Now().Add(10 * time.Second))
		require.NoError(t, err)
		assert.Equal(t, i > 0, c.Reused())
		require.NoError(t, roundTrip(t, c, "hello\n", nil))
		c.Release()
	}
	assert.Equal(t, int32(1), conns.Load())

	// A connection with unread bytes is not reused.
	c, err := p.Get(time.Time{})
	require.NoError(t, err)
	_, _ = c.Writer().WriteString("a\nb\n")
	require.NoError(t, c.Flush())
	_, err = c.Reader().ReadString('\n')
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := c.Reader().Peek(1); return err == nil }, 10*time.Second, time.Millisecond)
	c.Release()
	c, err = p.Get(time.Time{})
	require.NoError(t, err)
	assert.False(t, c.Reused())
	c.Close()
	p.CloseIdle()
}

func TestPoolDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, err = NewPool(addr, nil, NewWatchdog(10*time.Millisecond)).Get(time.Now().Add(time.Second))
	var de DialError
	require.ErrorAs(t, err, &de)
}

type watcher struct{ gone atomic.Bool }

func (w *watcher) Gone() bool { return w.gone.Load() }

// Wait returns as soon as the watcher says the caller left, and at the
// deadline otherwise, and with the first byte when it comes.
func TestWaitWatchesTheCaller(t *testing.T) {
	release := make(chan struct{})
	addr, _ := lineServer(t, release)
	p := NewPool(addr, nil, NewWatchdog(10*time.Millisecond))

	c, err := p.Get(time.Time{})
	require.NoError(t, err)
	w := &watcher{}
	w.gone.Store(true)
	_, _ = c.Writer().WriteString("x\n")
	require.NoError(t, c.Flush())
	require.ErrorIs(t, c.Wait(time.Now().Add(time.Minute), w), ErrCallerGone)
	c.Close()

	c, err = p.Get(time.Time{})
	require.NoError(t, err)
	_, _ = c.Writer().WriteString("y\n")
	require.NoError(t, c.Flush())
	start := time.Now()
	err = c.Wait(time.Now().Add(100*time.Millisecond), &watcher{})
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	c.Close()

	c, err = p.Get(time.Time{})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- roundTrip(t, c, "z\n", &watcher{}) }()
	release <- struct{}{} // the first connection's line
	release <- struct{}{} // the second's
	release <- struct{}{} // this one's, after some checks
	require.NoError(t, <-done)
	c.Release()
}

func TestIsHopByHop(t *testing.T) {
	for _, tc := range []struct {
		k    string
		conn []string
		want bool
	}{
		{"Connection", nil, true}, {"keep-alive", nil, true}, {"TE", nil, true}, {"Te", nil, true},
		{"Trailer", nil, true}, {"Upgrade", nil, true}, {"Transfer-Encoding", nil, true},
		{"Proxy-Connection", nil, true}, {"Proxy-Authenticate", nil, true}, {"proxy-authorization", nil, true},
		{"Content-Type", nil, false}, {"X-Hop", []string{"close, x-hop"}, true}, {"X-Hop", []string{"a", " X-HOP "}, true},
		{"X-Hopper", []string{"x-hop"}, false}, {"Authorization", []string{""}, false}, {"", nil, false},
	} {
		var conn [][]byte
		for _, v := range tc.conn {
			conn = append(conn, []byte(v))
		}
		assert.Equal(t, tc.want, IsHopByHop([]byte(tc.k), conn), "%q %q", tc.k, tc.conn)
		assert.Equal(t, tc.want, HopByHop(canonical(tc.k), tc.conn), "net/http's agrees on %q", tc.k)
	}
}

func canonical(k string) string {
	if k == "" {
		return k
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}

// TestWriterHeldOnlyUntilFlush: a connection holds a write buffer only while
// a request is written; one released with an unflushed request is closed,
// never pooled with half a request in it.
func TestWriterHeldOnlyUntilFlush(t *testing.T) {
	addr, conns := lineServer(t, nil)
	p := NewPool(addr, nil, NewWatchdog(10*time.Millisecond))
	c, err := p.Get(time.Time{})
	require.NoError(t, err)
	require.NoError(t, roundTrip(t, c, "one\n", nil))
	assert.Nil(t, c.bw, "no writer held after Flush")
	require.NoError(t, c.Flush(), "a Flush with nothing written sends nothing")
	c.Release()

	c, err = p.Get(time.Time{})
	require.NoError(t, err)
	assert.True(t, c.Reused())
	_, _ = c.Writer().WriteString("half a requ")
	c.Release() // unflushed: closed, not pooled
	assert.Nil(t, c.bw)

	c, err = p.Get(time.Time{})
	require.NoError(t, err)
	assert.False(t, c.Reused(), "the connection with an unflushed request was not pooled")
	require.NoError(t, roundTrip(t, c, "two\n", nil))
	c.Release()
	assert.EqualValues(t, 2, conns.Load())
}

// TestAbortFromAnotherGoroutine: Abort (a context's AfterFunc) may run
// while the owner writes a request; it only closes the socket, so the
// owner's Flush fails and its writer never reaches another connection
// (-race: Abort touches nothing the owner uses).
func TestAbortFromAnotherGoroutine(t *testing.T) {
	addr, _ := lineServer(t, make(chan struct{})) // never answers
	p := NewPool(addr, nil, NewWatchdog(10*time.Millisecond))
	c, err := p.Get(time.Time{})
	require.NoError(t, err)
	aborted := make(chan struct{})
	go func() { c.Abort(); close(aborted) }()
	w := c.Writer()
	var ferr error
	for i := 0; i < 4096 && ferr == nil; i++ { // until the abort shows: at most 4096 x 8 KiB
		_, _ = w.Write(make([]byte, 8<<10))
		ferr = c.Flush()
		if ferr == nil {
			w = c.Writer()
		}
	}
	<-aborted
	require.Error(t, ferr, "writes on an aborted connection fail")
	c.Close()
	assert.Nil(t, c.bw)
	c2, err := p.Get(time.Time{})
	require.NoError(t, err)
	assert.False(t, c2.Reused(), "the aborted connection was not pooled")
	c2.Close()
}
