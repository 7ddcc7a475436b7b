package kvevents

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// PublisherHWM is how many messages a Publisher queues for sending at most
// (vLLM's default hwm); beyond it, as a ZeroMQ PUB socket does at its high
// water mark, new messages are dropped.
const PublisherHWM = 100_000

// Connect mode: attempts to connect are spaced from minConnectBackoff,
// doubling up to maxConnectBackoff; one attempt, the ZMTP handshake
// included, may take dialTimeout.
const (
	minConnectBackoff = 50 * time.Millisecond
	maxConnectBackoff = 2 * time.Second
	dialTimeout       = 5 * time.Second
)

// Publisher publishes event batches on a ZeroMQ PUB socket as vLLM's
// ZmqEventPublisher does, for tests and the engine simulator. Its methods may
// be called concurrently. Publish never waits for the network.
type Publisher struct {
	// sock is the bound socket; nil in connect mode.
	sock     zmq4.Socket
	topic    string
	endpoint string

	mu  sync.Mutex
	seq uint64 // of the next batch
	// conn (connect mode) is the socket of the live connection, nil while
	// there is none.
	conn zmq4.Socket

	cancel context.CancelFunc // connect mode: stops connectLoop
	done   chan struct{}      // connect mode: closed when connectLoop returned
}

// PublisherBinds reports whether NewPublisher binds endpoint (true) or
// connects to it (false), or why it cannot publish on it. As in vLLM, an
// ipc:// or inproc:// endpoint and a tcp:// endpoint whose host is a
// wildcard (tcp://*:5557, tcp://0.0.0.0:5557, tcp://[::]:5557) are bound, and
// subscribers connect to them; any other tcp:// endpoint
// (tcp://127.0.0.1:5557) is connected to, and the subscriber binds it. A
// tcp:// endpoint with port 0 (or *) is bound to a free port, since nothing
// can be connected to there.
func PublisherBinds(endpoint string) (bool, error) {
	scheme, addr, ok := strings.Cut(endpoint, "://")
	if !ok {
		return false, fmt.Errorf("kvevents: endpoint %q is not tcp://, ipc:// or inproc://", endpoint)
	}
	switch scheme {
	case "ipc", "inproc":
		if addr == "" {
			return false, fmt.Errorf("kvevents: endpoint %q has no path", endpoint)
		}
		return true, nil
	case "tcp":
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return false, fmt.Errorf("kvevents: endpoint %q: %w", endpoint, err)
		}
		if host == "" {
			return false, fmt.Errorf("kvevents: endpoint %q has no host (use * to bind every interface)", endpoint)
		}
		// vLLM's rule: bind when the endpoint has "*" or "::" (0.0.0.0
		// connects, as vLLM's does).
		if host == "*" || strings.Contains(host, "::") {
			return true, nil
		}
		if port == "0" || port == "*" {
			return true, nil
		}
		if _, err := net.LookupPort("tcp", port); err != nil {
			return false, fmt.Errorf("kvevents: endpoint %q: %w", endpoint, err)
		}
		return false, nil
	}
	return false, fmt.Errorf("kvevents: endpoint %q is not tcp://, ipc:// or inproc://", endpoint)
}

// NewPublisher returns a Publisher that publishes on topic over a PUB socket
// bound to or connected to endpoint, as PublisherBinds decides: vLLM's
// default tcp://*:5557 is bound, tcp://127.0.0.1:0 binds a free port of the
// loopback interface (see Addr), and tcp://127.0.0.1:5557 connects to a
// subscriber that binds it.
//
// A connecting Publisher does not wait for the subscriber: it connects in
// the background, again after every lost connection, with back-off (50 ms
// doubling to 2 s). Batches published while it is not connected, or before
// the subscriber's subscription has arrived, are dropped, as by a ZeroMQ
// PUB socket; they still take a sequence number, so that a subscriber that
// follows the stream sees the gap.
//
// The socket is closed by Close or when ctx is done.
func NewPublisher(ctx context.Context, endpoint, topic string) (*Publisher, error) {
	bind, err := PublisherBinds(endpoint)
	if err != nil {
		return nil, err
	}
	p := &Publisher{topic: topic, endpoint: endpoint}
	if bind {
		sock := newPubSocket(ctx)
		if err := sock.Listen(endpoint); err != nil {
			sock.Close()
			return nil, fmt.Errorf("kvevents: publish on %s: %w", endpoint, err)
		}
		p.sock = sock
		return p, nil
	}
	if err := registerWatch(); err != nil {
		return nil, fmt.Errorf("kvevents: connect to %s: %w", endpoint, err)
	}
	ctx, p.cancel = context.WithCancel(ctx)
	p.done = make(chan struct{})
	go p.connectLoop(ctx, watchScheme+strings.TrimPrefix(endpoint, "tcp://"))
	return p, nil
}

func newPubSocket(ctx context.Context, opts ...zmq4.Option) zmq4.Socket {
	sock := zmq4.NewPub(ctx, append([]zmq4.Option{zmq4.WithLogger(log.New(io.Discard, "", 0))}, opts...)...)
	_ = sock.SetOption(zmq4.OptionHWM, PublisherHWM) // only fails for other options
	return sock
}

// connectLoop connects to the subscriber, waits until the connection is
// lost, and connects again, until ctx is done. dial is the endpoint under
// the watching transport.
func (p *Publisher) connectLoop(ctx context.Context, dial string) {
	defer close(p.done)
	backoff := minConnectBackoff
	for {
		w := &watch{lost: make(chan struct{})}
		sock := newPubSocket(context.WithValue(ctx, watchKey{}, w),
			zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(dialTimeout))
		if err := sock.Dial(dial); err != nil {
			sock.Close()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxConnectBackoff)
			continue
		}
		w.handshakeDone()
		backoff = minConnectBackoff
		p.mu.Lock()
		p.conn = sock
		p.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-w.lost:
		}
		p.mu.Lock()
		p.conn = nil
		p.mu.Unlock()
		sock.Close()
		select { // the subscriber may be restarting: give it a moment
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// Addr returns the address the Publisher is bound to, nil when it connects.
func (p *Publisher) Addr() net.Addr {
	if p.sock == nil {
		return nil
	}
	return p.sock.Addr()
}

// Topics returns, sorted, the topics subscribers have subscribed to on the
// Publisher's socket ("" for everything); empty before the first
// subscription has arrived. Batches whose topic none of them prefixes are
// dropped.
func (p *Publisher) Topics() []string {
	sock := p.sock
	if sock == nil {
		p.mu.Lock()
		sock = p.conn
		p.mu.Unlock()
	}
	if sock == nil {
		return nil
	}
	return sock.(zmq4.Topics).Topics()
}

// Publish sends one batch of events, stamped with the current time and the
// next sequence number, from 0. It only queues the batch: it does not wait
// for the network. As in ZeroMQ, a subscriber misses the batches published
// before its subscription reached the Publisher.
func (p *Publisher) Publish(events ...Event) error {
	payload, err := Encode(Batch{Time: float64(time.Now().UnixMicro()) / 1e6, DPRank: -1, Events: events})
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sock := p.sock
	if sock == nil {
		sock = p.conn
	}
	if sock == nil { // connecting: the batch is lost, as on a PUB socket
		p.seq++
		return nil
	}
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], p.seq)
	if err := sock.SendMulti(zmq4.NewMsgFrom([]byte(p.topic), seq[:], payload)); err != nil {
		return fmt.Errorf("kvevents: publish: %w", err)
	}
	p.seq++
	return nil
}

// Skip counts n batches as published without sending them, for batches the
// caller lost before it could publish them: subscribers see a gap in the
// sequence numbers, as for batches lost on the way, and can resynchronise.
func (p *Publisher) Skip(n uint64) {
	p.mu.Lock()
	p.seq += n
	p.mu.Unlock()
}

// Close closes the Publisher's socket. A connecting Publisher stops
// connecting; Close returns once it has.
func (p *Publisher) Close() error {
	if p.sock != nil {
		return p.sock.Close()
	}
	p.cancel()
	<-p.done
	return nil
}

// Connect mode dials through a transport of its own, which wraps zmq4's TCP
// transport so that the Publisher learns when its connection is lost (zmq4
// itself does not say) and can connect again. The watch travels in the
// socket's context.
const watchScheme = "kvevents-tcp://"

// registerWatch registers the transport in zmq4's registry, once, on the
// first connecting Publisher (zmq4 has no per-socket transports).
var registerWatch = sync.OnceValue(func() error {
	return zmq4.RegisterTransport(strings.TrimSuffix(watchScheme, "://"), watchTransport{transport.New("tcp")})
})

type watchKey struct{}

// watch follows one connection attempt: lost is closed once the connection
// fails or is closed.
type watch struct {
	lost chan struct{}
	once sync.Once

	mu   sync.Mutex
	conn net.Conn
}

func (w *watch) signal() { w.once.Do(func() { close(w.lost) }) }

// handshakeDone lifts the deadline that bounded the ZMTP handshake.
func (w *watch) handshakeDone() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil {
		_ = w.conn.SetDeadline(time.Time{})
	}
}

type watchTransport struct{ transport.Transport }

// Dial dials as the TCP transport does and, when ctx carries a watch, wraps
// the connection: its handshake must end within dialTimeout, it is closed
// when ctx is done (zmq4 leaves it open when the handshake fails), and the
// watch learns when it fails.
func (t watchTransport) Dial(ctx context.Context, d transport.Dialer, addr string) (net.Conn, error) {
	c, err := t.Transport.Dial(ctx, d, addr)
	if err != nil {
		return nil, err
	}
	w, _ := ctx.Value(watchKey{}).(*watch)
	if w == nil {
		return c, nil
	}
	_ = c.SetDeadline(time.Now().Add(dialTimeout))
	w.mu.Lock()
	w.conn = c
	w.mu.Unlock()
	context.AfterFunc(ctx, func() { c.Close() })
	return &watchedConn{Conn: c, w: w}, nil
}

type watchedConn struct {
	net.Conn
	w *watch
}

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.check(err)
	return n, err
}

func (c *watchedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.check(err)
	return n, err
}

func (c *watchedConn) Close() error {
	c.w.signal()
	return c.Conn.Close()
}

func (c *watchedConn) check(err error) {
	if err == nil {
		return
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return // the handshake's deadline: Dial fails and the socket is closed
	}
	c.w.signal()
}
