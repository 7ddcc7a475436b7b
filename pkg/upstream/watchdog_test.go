package upstream

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoServer echoes what it reads without allocating, and reports on
// closed when a connection's peer closed it (its read ended).
func echoServer(t *testing.T) (addr string, closed <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	ended := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if err != nil {
						ended <- struct{}{}
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), ended
}

// countingWatcher counts its questions; gone is its answer.
type countingWatcher struct {
	asked atomic.Int32
	gone  atomic.Bool
}

func (w *countingWatcher) Gone() bool { w.asked.Add(1); return w.gone.Load() }

// The watchdog closes the connection of a Wait whose caller left: the
// upstream sees it close (that is what cancels its work), and Wait returns
// ErrCallerGone.
func TestWatchdogClosesTheConnectionOfAGoneCaller(t *testing.T) {
	addr, closed := echoServer(t)
	p := NewPool(addr, nil, NewWatchdog(5*time.Millisecond))
	c, err := p.Get(time.Time{})
	require.NoError(t, err)
	w := &countingWatcher{}
	w.gone.Store(true)
	require.ErrorIs(t, c.Wait(time.Now().Add(time.Minute), w), ErrCallerGone, "nothing was sent: only the watchdog ends this wait")
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream never saw the connection close")
	}
	c.Close()
}

// A Watcher is never asked once its Wait returned (the queue-proxy reuses
// them), and a Wait that got its bytes is not taken for gone.
func TestWatcherNotAskedAfterItsWait(t *testing.T) {
	addr, _ := echoServer(t)
	d := NewWatchdog(time.Millisecond)
	p := NewPool(addr, nil, d)
	deadline := time.Now().Add(time.Minute)

	first, err := p.Get(time.Time{})
	require.NoError(t, err)
	w1 := &countingWatcher{}
	for range 50 {
		_, _ = first.Writer().WriteString("x")
		require.NoError(t, first.Flush())
		require.NoError(t, first.Wait(deadline, w1))
		_, err := first.Reader().ReadByte()
		require.NoError(t, err)
	}
	askedAfter := w1.asked.Load()
	w1.gone.Store(true) // a question now would close first

	// Another wait, asked twice: at least one whole sweep ran since.
	second, err := p.Get(time.Time{})
	require.NoError(t, err)
	w2 := &countingWatcher{}
	waited := make(chan error, 1)
	go func() { waited <- second.Wait(time.Now().Add(time.Minute), w2) }()
	require.Eventually(t, func() bool { return w2.asked.Load() >= 2 }, 10*time.Second, time.Millisecond)
	_, _ = second.Writer().WriteString("y")
	require.NoError(t, second.Flush())
	require.NoError(t, <-waited)

	assert.Equal(t, askedAfter, w1.asked.Load(), "asked after its wait returned")
	_, _ = first.Writer().WriteString("z")
	require.NoError(t, first.Flush())
	require.NoError(t, first.Wait(deadline, nil), "the connection is open")
	first.Release()
	second.Close()
}

// The watchdog's goroutine runs only while a Wait waits.
func TestWatchdogStopsWhenNothingWaits(t *testing.T) {
	addr, _ := echoServer(t)
	d := NewWatchdog(time.Millisecond)
	c, err := NewPool(addr, nil, d).Get(time.Time{})
	require.NoError(t, err)
	w := &countingWatcher{}
	waited := make(chan error, 1)
	go func() { waited <- c.Wait(time.Now().Add(time.Minute), w) }()
	require.Eventually(t, func() bool { return w.asked.Load() > 0 }, 10*time.Second, time.Millisecond)
	_, _ = io.WriteString(c.Writer(), "x")
	require.NoError(t, c.Flush())
	require.NoError(t, <-waited)
	running := func() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.running }
	require.Eventually(t, func() bool { return !running() }, 10*time.Second, time.Millisecond)
	c.Close()
}

// A Wait under a watchdog allocates nothing: a stream waits once per
// token.
func TestWaitAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	addr, _ := echoServer(t)
	p := NewPool(addr, nil, NewWatchdog(time.Hour)) // started once, never sweeps
	c, err := p.Get(time.Time{})
	require.NoError(t, err)
	defer c.Close()
	deadline := time.Now().Add(time.Minute)
	w := &countingWatcher{}
	allocs := testing.AllocsPerRun(100, func() {
		_, _ = c.Writer().WriteString("x")
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := c.Wait(deadline, w); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Reader().ReadByte(); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// A wait with no connection (a request in a queue) is watched the same:
// its Watcher is asked until it says gone, then never again, and Stop
// reports it.
func TestWatchWithoutAConnection(t *testing.T) {
	d := NewWatchdog(time.Millisecond)
	var x Watch
	w := &countingWatcher{}
	d.Start(&x, w, nil)
	require.Eventually(t, func() bool { return w.asked.Load() >= 2 }, 10*time.Second, time.Millisecond)
	w.gone.Store(true)
	require.Eventually(t, func() bool { x.mu.Lock(); defer x.mu.Unlock(); return x.state == watchGone }, 10*time.Second, time.Millisecond)
	asked := w.asked.Load()
	var other Watch // asked twice: at least one whole sweep ran since
	w3 := &countingWatcher{}
	d.Start(&other, w3, nil)
	require.Eventually(t, func() bool { return w3.asked.Load() >= 2 }, 10*time.Second, time.Millisecond)
	d.Stop(&other)
	assert.Equal(t, asked, w.asked.Load(), "not asked again once gone")
	assert.True(t, d.Stop(&x))

	w2 := &countingWatcher{}
	d.Start(&x, w2, nil) // a stopped Watch starts again
	require.Eventually(t, func() bool { return w2.asked.Load() > 0 }, 10*time.Second, time.Millisecond)
	assert.False(t, d.Stop(&x))
}

// Watches stopped in any order (the list's head, middle and tail) are
// never asked again, and the ones still started go on being asked.
func TestWatchesStoppedInAnyOrder(t *testing.T) {
	d := NewWatchdog(time.Millisecond)
	var xs [4]Watch
	var ws [4]countingWatcher
	for i := range xs {
		d.Start(&xs[i], &ws[i], nil)
	}
	// The list holds 3, 2, 1, 0: stop its middle (1), its head (3) and
	// its tail (0).
	for _, i := range []int{1, 3, 0} {
		d.Stop(&xs[i])
	}
	stopped := [4]int32{ws[0].asked.Load(), ws[1].asked.Load(), 0, ws[3].asked.Load()}
	require.Eventually(t, func() bool { return ws[2].asked.Load() >= stopped[2]+3 }, 10*time.Second, time.Millisecond)
	for _, i := range []int{0, 1, 3} {
		assert.Equal(t, stopped[i], ws[i].asked.Load(), "watch %d asked after Stop", i)
	}
	d.Stop(&xs[2])
	d.Start(&xs[1], &ws[1], nil) // into an empty list again
	asked := ws[1].asked.Load()
	require.Eventually(t, func() bool { return ws[1].asked.Load() >= asked+2 }, 10*time.Second, time.Millisecond)
	d.Stop(&xs[1])
	d.mu.Lock()
	defer d.mu.Unlock()
	assert.Nil(t, d.head, "every watch stopped")
}
