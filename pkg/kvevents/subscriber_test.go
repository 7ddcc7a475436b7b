package kvevents

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/testing/runtest"
)

const timeout = 10 * time.Second

// logs is a slog.Handler that sends the message of every record to a channel,
// dropping those that do not fit.
type logs chan string

func (l logs) Enabled(context.Context, slog.Level) bool { return true }
func (l logs) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l logs) WithGroup(string) slog.Handler            { return l }
func (l logs) Handle(_ context.Context, r slog.Record) error {
	select {
	case l <- r.Message:
	default:
	}
	return nil
}

// wait waits for a record with message msg.
func (l logs) wait(t *testing.T, msg string) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-l:
			if m == msg {
				return
			}
		case <-deadline:
			t.Fatalf("no log %q", msg)
		}
	}
}

// subscribe runs a Subscriber until the test ends. Its batches, and the gaps
// it reports, arrive on the returned channel in the order they happened.
func subscribe(t *testing.T, endpoint, topic string, opts ...Option) (*Subscriber, <-chan any) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	seen := make(chan any, 64)
	send := func(v any) {
		select {
		case seen <- v:
		case <-ctx.Done():
		}
	}
	opts = append([]Option{
		WithBackoff(5*time.Millisecond, 20*time.Millisecond),
		WithGapHandler(func(topic string, from, to uint64) { send(fmt.Sprintf("gap %s %d-%d", topic, from, to)) }),
	}, opts...)
	s := NewSubscriber(endpoint, topic, func(b Batch) { send(b) }, opts...)
	runtest.Go(t, ctx, cancel, timeout, "Run", s.Run)
	return s, seen
}

// next returns what the subscriber saw next.
func next(t *testing.T, seen <-chan any) any {
	t.Helper()
	select {
	case v := <-seen:
		return v
	case <-time.After(timeout):
		t.Fatal("nothing received")
		return nil
	}
}

func nextBatch(t *testing.T, seen <-chan any) Batch {
	t.Helper()
	v := next(t, seen)
	b, ok := v.(Batch)
	require.True(t, ok, "got %v, want a batch", v)
	return b
}

// publish binds a Publisher to a free port of the loopback interface.
func publish(t *testing.T, topic string) (*Publisher, string) {
	t.Helper()
	p, err := NewPublisher(t.Context(), "tcp://127.0.0.1:0", topic)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p, "tcp://" + p.Addr().String()
}

// subscribed waits until a subscription to topic reached the PUB socket.
func subscribed(t *testing.T, sock zmq4.Socket, topic string) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !slices.Contains(sock.(zmq4.Topics).Topics(), topic) {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no subscription to %q", topic)
		}
	}
}

// freePort returns a port of the loopback interface nothing listened on a
// moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

func frames(topic string, seq uint64, payload []byte) zmq4.Msg {
	return zmq4.NewMsgFrom([]byte(topic), binary.BigEndian.AppendUint64(nil, seq), payload)
}

func TestRoundTrip(t *testing.T) {
	p, endpoint := publish(t, "kv@pod@model")
	s, seen := subscribe(t, endpoint, "kv@pod")
	subscribed(t, p.sock, "kv@pod")

	sent := [][]Event{
		{BlockStored{Hashes: []BlockHash{IntHash(1), IntHash(2)}, TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2, Medium: "GPU"}},
		{BlockStored{Hashes: []BlockHash{BytesHash([]byte{3})}, Parent: ptr(IntHash(2)), TokenIDs: []uint32{5, 6},
			BlockSize: 2, LoRAID: ptr(1), LoRAName: "a"}, BlockRemoved{Hashes: []BlockHash{IntHash(1)}}},
		{AllBlocksCleared{}},
	}
	before := float64(time.Now().Add(-time.Second).Unix())
	for _, events := range sent {
		require.NoError(t, p.Publish(events...))
	}
	for i, events := range sent {
		b := nextBatch(t, seen)
		require.Equal(t, uint64(i), b.Seq)
		require.Equal(t, i == 0, b.First)
		require.Equal(t, "kv@pod@model", b.Topic)
		require.Equal(t, -1, b.DPRank)
		require.Equal(t, events, b.Events)
		require.Greater(t, b.Time, before)
	}
	require.Zero(t, s.Gaps())
	require.Zero(t, s.Malformed())
}

func TestGaps(t *testing.T) {
	p, endpoint := publish(t, "kv")
	s, seen := subscribe(t, endpoint, "")
	subscribed(t, p.sock, "")

	setSeq := func(seq uint64) {
		p.mu.Lock()
		p.seq = seq
		p.mu.Unlock()
	}
	require.NoError(t, p.Publish()) // 0
	setSeq(5)
	require.NoError(t, p.Publish()) // 5: 1-4 lost
	require.NoError(t, p.Publish()) // 6
	setSeq(0)
	require.NoError(t, p.Publish()) // 0: the publisher restarted

	require.Equal(t, uint64(0), nextBatch(t, seen).Seq)
	require.Equal(t, "gap kv 1-5", next(t, seen))
	require.Equal(t, uint64(5), nextBatch(t, seen).Seq)
	require.Equal(t, uint64(6), nextBatch(t, seen).Seq)
	require.Equal(t, "gap kv 7-0", next(t, seen))
	b := nextBatch(t, seen)
	require.Equal(t, uint64(0), b.Seq)
	require.False(t, b.First)
	require.Equal(t, uint64(2), s.Gaps())
}

func TestMalformedSkipped(t *testing.T) {
	p, endpoint := publish(t, "kv")
	s, seen := subscribe(t, endpoint, "kv")
	subscribed(t, p.sock, "kv")

	require.NoError(t, p.Publish()) // 0
	require.NoError(t, p.sock.Send(frames("kv", 1, []byte{0xc1})))
	require.NoError(t, p.sock.Send(zmq4.NewMsgFrom([]byte("kv"), []byte{0, 0, 0, 2})))
	require.NoError(t, p.sock.Send(zmq4.NewMsgFrom([]byte("kv"), []byte{0, 0, 0, 2}, []byte{0x90})))
	require.NoError(t, p.sock.Send(zmq4.NewMsgString("kv")))
	p.mu.Lock()
	p.seq = 2
	p.mu.Unlock()
	require.NoError(t, p.Publish(AllBlocksCleared{}))

	require.Equal(t, uint64(0), nextBatch(t, seen).Seq)
	b := nextBatch(t, seen) // no gap: seq 1 arrived, if malformed
	require.Equal(t, uint64(2), b.Seq)
	require.Equal(t, []Event{AllBlocksCleared{}}, b.Events)
	require.Equal(t, uint64(4), s.Malformed())
	require.Zero(t, s.Gaps())
}

func TestTopics(t *testing.T) {
	p, endpoint := publish(t, "kv@b")
	_, seen := subscribe(t, endpoint, "kv@b")
	subscribed(t, p.sock, "kv@b")

	payload, err := Encode(Batch{Events: []Event{AllBlocksCleared{}}})
	require.NoError(t, err)
	require.NoError(t, p.sock.Send(frames("kv@a", 0, payload))) // filtered out
	require.NoError(t, p.sock.Send(frames("kv@b2", 7, payload)))
	require.NoError(t, p.Publish()) // kv@b 0
	require.NoError(t, p.sock.Send(frames("kv@b2", 8, payload)))
	require.NoError(t, p.Publish()) // kv@b 1

	// Every topic has its own sequence.
	for _, want := range []struct {
		topic string
		seq   uint64
		first bool
	}{{"kv@b2", 7, true}, {"kv@b", 0, true}, {"kv@b2", 8, false}, {"kv@b", 1, false}} {
		b := nextBatch(t, seen)
		require.Equal(t, want.topic, b.Topic)
		require.Equal(t, want.seq, b.Seq)
		require.Equal(t, want.first, b.First)
	}
}

func TestSubscriberStartsFirstAndReconnects(t *testing.T) {
	endpoint := "tcp://127.0.0.1:" + freePort(t)
	log := make(logs, 1024)
	s, seen := subscribe(t, endpoint, "kv", WithLogger(slog.New(log)))
	log.wait(t, "kv events: connect failed; retrying")

	// The engine binds (vLLM does for a wildcard endpoint; here on
	// loopback only).
	bound := func() zmq4.Socket {
		pub := zmq4.NewPub(t.Context())
		require.NoError(t, pub.Listen(endpoint))
		subscribed(t, pub, "kv")
		return pub
	}
	payload, err := Encode(Batch{})
	require.NoError(t, err)
	pub := bound()
	require.NoError(t, pub.Send(frames("kv", 0, payload)))
	require.NoError(t, pub.Send(frames("kv", 1, payload)))
	require.Equal(t, uint64(0), nextBatch(t, seen).Seq)
	require.Equal(t, uint64(1), nextBatch(t, seen).Seq)

	// The engine restarts: its sequence restarts too, after a new connection.
	require.NoError(t, pub.Close())
	log.wait(t, "kv events: connection lost; reconnecting")
	pub = bound()
	t.Cleanup(func() { pub.Close() })
	require.NoError(t, pub.Send(frames("kv", 0, payload)))
	b := nextBatch(t, seen)
	require.Equal(t, uint64(0), b.Seq)
	require.True(t, b.First)
	require.Zero(t, s.Gaps())
}

func TestSubscriberBinds(t *testing.T) {
	t.Run("wildcard", func(t *testing.T) { testSubscriberBinds(t, "*") })
	t.Run("loopback with WithBind", func(t *testing.T) { testSubscriberBinds(t, "127.0.0.1", WithBind()) })
}

func testSubscriberBinds(t *testing.T, host string, opts ...Option) {
	port := freePort(t)
	log := make(logs, 1024)
	_, seen := subscribe(t, "tcp://"+host+":"+port, "kv", append(opts, WithLogger(slog.New(log)))...)
	log.wait(t, "kv events: listening")

	// vLLM connects when its endpoint has no wildcard.
	pub := zmq4.NewPub(t.Context())
	t.Cleanup(func() { pub.Close() })
	require.NoError(t, pub.Dial("tcp://127.0.0.1:"+port))
	subscribed(t, pub, "kv")
	payload, err := Encode(Batch{DPRank: 2, Events: []Event{AllBlocksCleared{}}})
	require.NoError(t, err)
	require.NoError(t, pub.Send(frames("kv@pod", 3, payload)))
	b := nextBatch(t, seen)
	require.Equal(t, Batch{Topic: "kv@pod", Seq: 3, First: true, DPRank: 2, Events: []Event{AllBlocksCleared{}}}, b)
}

func TestRunRefusesEndpoint(t *testing.T) {
	for _, endpoint := range []string{"127.0.0.1:5557", "http://127.0.0.1:5557", ""} {
		err := NewSubscriber(endpoint, "", func(Batch) {}).Run(t.Context())
		require.ErrorContains(t, err, "kvevents: endpoint")
	}
}
