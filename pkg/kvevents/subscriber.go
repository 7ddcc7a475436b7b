package kvevents

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// maxTopics bounds the topics whose last sequence number a Subscriber keeps;
// beyond it, it forgets them all.
const maxTopics = 1 << 10

// Subscriber follows the event stream of one endpoint. Create it with
// NewSubscriber and call Run.
type Subscriber struct {
	endpoint, topic string
	listen          bool
	handle          func(Batch)
	onGap           func(topic string, from, to uint64)
	log             *slog.Logger
	minBackoff      time.Duration
	maxBackoff      time.Duration

	gaps, malformed atomic.Uint64
}

// Option configures a Subscriber.
type Option func(*Subscriber)

// WithLogger sets the logger of a Subscriber; the default discards.
func WithLogger(l *slog.Logger) Option {
	return func(s *Subscriber) { s.log = l }
}

// WithGapHandler sets a function the Subscriber calls, before handling the
// batch that reveals it, when the sequence numbers of a topic skip: from is
// the number expected (the last one plus 1) and to the one that arrived.
// When to > from, batches from to to-1 were lost; when to < from, the
// publisher restarted its count (its engine may have restarted).
func WithGapHandler(f func(topic string, from, to uint64)) Option {
	return func(s *Subscriber) { s.onGap = f }
}

// WithBind makes the Subscriber bind its endpoint whatever its host, so
// that an engine connects to it: the queue-proxy binds tcp://127.0.0.1:P,
// reachable from its own pod only, and the engine beside it publishes there.
func WithBind() Option {
	return func(s *Subscriber) { s.listen = true }
}

// WithBackoff sets the delays between attempts to connect: the first is
// minimum (at least 1 ms), each next one doubles up to maximum. The default
// is 100 ms to 5 s.
func WithBackoff(minimum, maximum time.Duration) Option {
	minimum = max(minimum, time.Millisecond)
	return func(s *Subscriber) { s.minBackoff, s.maxBackoff = minimum, max(minimum, maximum) }
}

// NewSubscriber returns a Subscriber that receives the messages of endpoint
// whose topic starts with topic ("" for all) and calls handle with each
// batch, in order, from one goroutine.
//
// An endpoint whose host is a wildcard (tcp://*:5557, tcp://0.0.0.0:5557,
// tcp://[::]:5557) is bound, and engines connect to it: vLLM does so when
// its own endpoint has no wildcard. Any other endpoint (tcp://10.0.0.5:5557,
// ipc:///tmp/kv) is connected to, as to an engine that binds, which vLLM
// does with its default tcp://*:5557. WithBind binds any endpoint. handle
// must not be nil.
func NewSubscriber(endpoint, topic string, handle func(Batch), opts ...Option) *Subscriber {
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(endpoint, "tcp://"))
	s := &Subscriber{
		endpoint:   endpoint,
		topic:      topic,
		listen:     strings.HasPrefix(endpoint, "tcp://") && (host == "*" || host == "0.0.0.0" || host == "::"),
		handle:     handle,
		log:        slog.New(slog.DiscardHandler),
		minBackoff: 100 * time.Millisecond,
		maxBackoff: 5 * time.Second,
	}
	for _, opt := range opts {
		opt(s)
	}
	s.log = s.log.With(slog.String("endpoint", endpoint), slog.String("topic", topic))
	return s
}

// Gaps returns how many gaps in sequence numbers the Subscriber has seen.
func (s *Subscriber) Gaps() uint64 { return s.gaps.Load() }

// Malformed returns how many messages the Subscriber skipped because they
// were not three frames, or their sequence number or payload could not be
// read.
func (s *Subscriber) Malformed() uint64 { return s.malformed.Load() }

// Run follows the endpoint until ctx is done, then returns nil. It connects
// (or binds) again with back-off after every failure, so it may start before
// the engine. It returns an error at once only when the endpoint is not a
// tcp://, ipc:// or inproc:// address. Run must be called once.
func (s *Subscriber) Run(ctx context.Context) error {
	if !strings.HasPrefix(s.endpoint, "tcp://") && !strings.HasPrefix(s.endpoint, "ipc://") &&
		!strings.HasPrefix(s.endpoint, "inproc://") {
		return fmt.Errorf("kvevents: endpoint %q is not tcp://, ipc:// or inproc://", s.endpoint)
	}
	backoff := s.minBackoff
	for {
		connected, err := s.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			backoff = s.minBackoff
			s.log.Info("kv events: connection lost; reconnecting", slog.Duration("backoff", backoff), slog.Any("error", err))
		} else {
			s.log.Debug("kv events: connect failed; retrying", slog.Duration("backoff", backoff), slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.maxBackoff)
	}
}

// session connects once and receives until the connection fails; it reports
// whether it connected.
func (s *Subscriber) session(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sock := zmq4.NewSub(ctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(5*time.Second),
		zmq4.WithLogger(slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)))
	defer sock.Close()
	if err := sock.SetOption(zmq4.OptionSubscribe, s.topic); err != nil {
		return false, err
	}
	connect, verb := sock.Dial, "connected"
	if s.listen {
		connect, verb = sock.Listen, "listening"
	}
	if err := connect(s.endpoint); err != nil {
		return false, err
	}
	s.log.Info("kv events: " + verb)
	last := make(map[string]uint64)
	for {
		msg, err := sock.Recv()
		if ctx.Err() != nil {
			return true, nil
		}
		if err != nil {
			if s.listen { // one of the engines went away; the others stay
				s.log.Debug("kv events: receive failed", slog.Any("error", err))
				select { // never a hot loop on a socket that keeps failing
				case <-ctx.Done():
					return true, nil
				case <-time.After(s.minBackoff):
				}
				continue
			}
			return true, fmt.Errorf("receive: %w", err)
		}
		s.receive(msg, last)
	}
}

// receive checks, decodes and handles one message. last holds the sequence
// number of the last message of each topic since the session started.
func (s *Subscriber) receive(msg zmq4.Msg, last map[string]uint64) {
	if len(msg.Frames) != 3 || len(msg.Frames[1]) != 8 {
		s.skip(fmt.Errorf("%d frames, want 3 with an 8-byte sequence number", len(msg.Frames)))
		return
	}
	topic, seq := string(msg.Frames[0]), binary.BigEndian.Uint64(msg.Frames[1])
	prev, seen := last[topic]
	if seen && seq != prev+1 {
		s.gaps.Add(1)
		s.log.Warn("kv events: sequence gap", slog.String("msgTopic", topic), slog.Uint64("from", prev+1), slog.Uint64("to", seq))
		if s.onGap != nil {
			s.onGap(topic, prev+1, seq)
		}
	}
	if !seen && len(last) >= maxTopics {
		clear(last)
	}
	last[topic] = seq
	b, err := Decode(msg.Frames[2])
	if err != nil {
		s.skip(fmt.Errorf("seq %d: %w", seq, err))
		return
	}
	b.Topic, b.Seq, b.First = topic, seq, !seen
	s.handle(b)
}

// skip counts a malformed message, and logs it when the count is a power of
// two, so that a stream of them does not flood the log.
func (s *Subscriber) skip(err error) {
	if n := s.malformed.Add(1); n&(n-1) == 0 {
		s.log.Warn("kv events: malformed message skipped", slog.Uint64("malformed", n), slog.Any("error", err))
	}
}
