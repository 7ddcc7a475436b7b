package kvevents

import (
	"context"
	"encoding/binary"
	"io"
	"log"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/stretchr/testify/require"
)

const pubTimeout = 10 * time.Second

func TestPublisherBinds(t *testing.T) {
	for endpoint, bind := range map[string]bool{
		"tcp://*:5557":          true,
		"tcp://0.0.0.0:5557":    false,
		"tcp://[::]:5557":       true,
		"tcp://127.0.0.1:0":     true, // a free port: nothing to connect to
		"tcp://127.0.0.1:*":     true,
		"ipc:///tmp/kv.sock":    true,
		"inproc://kv":           true,
		"tcp://127.0.0.1:5557":  false,
		"tcp://10.0.0.5:5557":   false,
		"tcp://[::1]:5557":      true, // vLLM: any "::" binds
		"tcp://engine-0:5557":   false,
		"tcp://localhost:65535": false,
	} {
		got, err := PublisherBinds(endpoint)
		require.NoError(t, err, endpoint)
		require.Equal(t, bind, got, endpoint)
	}
	for _, endpoint := range []string{"", "127.0.0.1:5557", "http://127.0.0.1:5557", "udp://127.0.0.1:5557",
		"tcp://127.0.0.1", "tcp://:5557", "tcp://127.0.0.1:70000", "ipc://", "inproc://"} {
		_, err := PublisherBinds(endpoint)
		require.Error(t, err, endpoint)
		_, err = NewPublisher(t.Context(), endpoint, "kv")
		require.Error(t, err, endpoint)
	}
}

// sub is a SUB socket bound to a loopback port, as the queue-proxy binds
// one for its engine to connect to.
type sub struct {
	sock zmq4.Socket
	msgs chan zmq4.Msg
}

// bindSub binds a SUB socket subscribed to topic on addr (host:port) until
// the test ends, or until close.
func bindSub(t *testing.T, addr, topic string) *sub {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	s := &sub{
		sock: zmq4.NewSub(ctx, zmq4.WithLogger(log.New(io.Discard, "", 0))),
		msgs: make(chan zmq4.Msg, 64),
	}
	require.NoError(t, s.sock.SetOption(zmq4.OptionSubscribe, topic))
	require.NoError(t, s.sock.Listen("tcp://"+addr))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := s.sock.Recv()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				continue // a publisher's connection went away
			}
			select {
			case s.msgs <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		s.sock.Close()
		<-done
	})
	return s
}

func (s *sub) port(t *testing.T) string {
	t.Helper()
	return strconv.Itoa(s.sock.Addr().(*net.TCPAddr).Port)
}

// next returns the next message's sequence number and batch.
func (s *sub) next(t *testing.T) (string, uint64, Batch) {
	t.Helper()
	select {
	case msg := <-s.msgs:
		require.Len(t, msg.Frames, 3)
		require.Len(t, msg.Frames[1], 8)
		b, err := Decode(msg.Frames[2])
		require.NoError(t, err)
		return string(msg.Frames[0]), binary.BigEndian.Uint64(msg.Frames[1]), b
	case <-time.After(pubTimeout):
		t.Fatal("nothing received")
		return "", 0, Batch{}
	}
}

// waitTopic waits until a subscription to topic has reached p.
func waitTopic(t *testing.T, p *Publisher, topic string) {
	t.Helper()
	require.Eventually(t, func() bool { return slices.Contains(p.Topics(), topic) }, pubTimeout, time.Millisecond)
}

func newPub(t *testing.T, endpoint string) *Publisher {
	t.Helper()
	p, err := NewPublisher(t.Context(), endpoint, "kv@pod")
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() }) // a bound socket reports its connections closed by their peers
	return p
}

func TestPublisherConnects(t *testing.T) {
	s := bindSub(t, "127.0.0.1:0", "kv")
	p := newPub(t, "tcp://127.0.0.1:"+s.port(t))
	require.Nil(t, p.Addr(), "a connected Publisher has no address of its own")
	waitTopic(t, p, "kv")

	sent := [][]Event{
		{BlockStored{Hashes: []BlockHash{IntHash(1), IntHash(2)}, TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2, Medium: "GPU"}},
		{BlockRemoved{Hashes: []BlockHash{IntHash(1)}, Medium: "GPU"}},
		{AllBlocksCleared{}},
	}
	for _, events := range sent {
		require.NoError(t, p.Publish(events...))
	}
	for i, events := range sent {
		topic, seq, b := s.next(t)
		require.Equal(t, "kv@pod", topic)
		require.Equal(t, uint64(i), seq, "sequence numbers start at 0 and rise by one per batch")
		require.Equal(t, -1, b.DPRank)
		require.Equal(t, events, b.Events)
	}
}

func TestPublisherConnectsToALateSubscriber(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())

	// Nothing listens yet: the Publisher starts anyway and drops what it is
	// given, counting it.
	p := newPub(t, "tcp://"+addr)
	require.NoError(t, p.Publish(AllBlocksCleared{})) // 0, lost
	require.Empty(t, p.Topics())

	s := bindSub(t, addr, "")
	waitTopic(t, p, "")
	require.NoError(t, p.Publish(BlockRemoved{Hashes: []BlockHash{IntHash(7)}})) // 1
	_, seq, b := s.next(t)
	require.Equal(t, uint64(1), seq, "the lost batch left a gap")
	require.Equal(t, []Event{BlockRemoved{Hashes: []BlockHash{IntHash(7)}}}, b.Events)
}

func TestPublisherReconnects(t *testing.T) {
	s := bindSub(t, "127.0.0.1:0", "kv")
	addr := "127.0.0.1:" + s.port(t)
	p := newPub(t, "tcp://"+addr)
	waitTopic(t, p, "kv")
	require.NoError(t, p.Publish()) // 0
	_, seq, _ := s.next(t)
	require.Equal(t, uint64(0), seq)

	p.mu.Lock()
	first := p.conn
	p.mu.Unlock()
	require.NotNil(t, first)

	// The subscriber restarts on the same port: the Publisher notices the
	// lost connection and connects again.
	require.NoError(t, s.sock.Close())
	s = bindSub(t, addr, "kv")
	require.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.conn != nil && p.conn != first && slices.Contains(p.conn.(zmq4.Topics).Topics(), "kv")
	}, pubTimeout, time.Millisecond)
	p.Skip(2) // 1, 2: lost by the caller
	require.NoError(t, p.Publish(AllBlocksCleared{}))
	_, seq, b := s.next(t)
	require.Equal(t, uint64(3), seq)
	require.Equal(t, []Event{AllBlocksCleared{}}, b.Events)
}

func TestPublisherStopsConnecting(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())

	// Close returns while the Publisher is still trying to connect.
	p, err := NewPublisher(t.Context(), "tcp://"+addr, "kv")
	require.NoError(t, err)
	require.NoError(t, p.Close())
	require.NoError(t, p.Close(), "Close is idempotent")
	require.NoError(t, p.Publish(AllBlocksCleared{}), "publishing after Close drops the batch")

	// So does ending its context.
	ctx, cancel := context.WithCancel(t.Context())
	p, err = NewPublisher(ctx, "tcp://"+addr, "kv")
	require.NoError(t, err)
	cancel()
	select {
	case <-p.done:
	case <-time.After(pubTimeout):
		t.Fatal("the Publisher did not stop with its context")
	}
}

func TestPublisherBindsAndSubscriberConnects(t *testing.T) {
	p := newPub(t, "tcp://127.0.0.1:0")
	require.NotNil(t, p.Addr())
	got := make(chan Batch, 8)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = NewSubscriber("tcp://"+p.Addr().String(), "kv", func(b Batch) { got <- b },
			WithBackoff(5*time.Millisecond, 20*time.Millisecond)).Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitTopic(t, p, "kv")
	require.NoError(t, p.Publish(AllBlocksCleared{}))
	select {
	case b := <-got:
		require.Equal(t, uint64(0), b.Seq)
		require.Equal(t, "kv@pod", b.Topic)
		require.Equal(t, []Event{AllBlocksCleared{}}, b.Events)
	case <-time.After(pubTimeout):
		t.Fatal("nothing received")
	}
}
