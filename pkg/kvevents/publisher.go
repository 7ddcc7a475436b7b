package kvevents

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Publisher publishes event batches on a ZeroMQ PUB socket as vLLM does, for
// tests and the engine simulator. Its methods may be called concurrently.
type Publisher struct {
	sock  zmq4.Socket
	topic string

	mu  sync.Mutex
	seq uint64 // of the next batch
}

// NewPublisher binds a PUB socket to endpoint, such as vLLM's default
// tcp://*:5557, or tcp://127.0.0.1:0 for a free port (see Addr), and
// publishes on topic. Subscribers connect to it. The socket is closed by
// Close or when ctx is done.
func NewPublisher(ctx context.Context, endpoint, topic string) (*Publisher, error) {
	sock := zmq4.NewPub(ctx, zmq4.WithLogger(log.New(io.Discard, "", 0)))
	if err := sock.Listen(endpoint); err != nil {
		sock.Close()
		return nil, fmt.Errorf("kvevents: publish on %s: %w", endpoint, err)
	}
	return &Publisher{sock: sock, topic: topic}, nil
}

// Addr returns the address the Publisher is bound to.
func (p *Publisher) Addr() net.Addr { return p.sock.Addr() }

// Publish sends one batch of events, stamped with the current time and the
// next sequence number, from 0. As in ZeroMQ, a subscriber misses the batches
// published before its subscription reached the Publisher.
func (p *Publisher) Publish(events ...Event) error {
	payload, err := Encode(Batch{Time: float64(time.Now().UnixMicro()) / 1e6, DPRank: -1, Events: events})
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], p.seq)
	if err := p.sock.SendMulti(zmq4.NewMsgFrom([]byte(p.topic), seq[:], payload)); err != nil {
		return fmt.Errorf("kvevents: publish: %w", err)
	}
	p.seq++
	return nil
}

// Close closes the Publisher's socket.
func (p *Publisher) Close() error { return p.sock.Close() }
