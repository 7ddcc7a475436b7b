package queueproxy

import (
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// kvDeltas turns changes to a set of prompt blocks into the KV events of
// the stats stream (pkg/stats.KVEvent): deltas in seq order, and a snapshot
// after a reset or for a new subscriber. Both sources of the set use it:
// the KV model (kvmodel.go) and the follower of the engine's own events
// (kvfollow.go). Its owner guards it with its lock.
type kvDeltas struct {
	pod   string
	seq   uint64
	batch map[uint64]bool // hashes changed since the last message: were they present then?
	order []uint64        // batch keys in the order of their first change
	reset bool            // the next message is a snapshot
	meta  bool            // block size or capacity changed since the last message
	// changed holds a token once there is something to send: the flusher
	// (flushKV) waits on it, so an idle set costs no timer.
	changed chan struct{}
}

func newKVDeltas(pod string) kvDeltas {
	return kvDeltas{pod: pod, batch: make(map[uint64]bool), changed: make(chan struct{}, 1)}
}

// wake tells the flusher that a message is due. It never blocks: one token
// stands for any number of changes.
func (d *kvDeltas) wake() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// metaChanged records that the block size or the capacity changed.
func (d *kvDeltas) metaChanged() {
	d.meta = true
	d.wake()
}

// kvSet is what kvDeltas reads of the set when it builds a message.
type kvSet interface {
	// has reports whether hash is in the set now.
	has(hash uint64) bool
	// appendAll appends every hash of the set to dst.
	appendAll(dst []uint64) []uint64
	// size is the number of hashes in the set.
	size() int
}

// note records that hash changes, remembering its presence at the last
// message on its first change in a batch. The delta sent is the difference
// between then and the flush, so any sequence of additions and removals of
// a block within a batch comes out right: added then removed (absent
// before) is no change, removed then added (present before) is no change.
func (d *kvDeltas) note(hash uint64, present bool) {
	if d.reset {
		return // the next message is a snapshot anyway
	}
	if _, ok := d.batch[hash]; !ok {
		d.batch[hash] = present
		d.order = append(d.order, hash)
		if len(d.order) == 1 {
			d.wake()
		}
	}
}

// clear makes the next message a snapshot.
func (d *kvDeltas) clear() {
	clear(d.batch)
	d.order = d.order[:0]
	d.reset, d.meta = true, true
	d.wake()
}

// next returns the message of the changes batched since the last one, nil
// when there are none.
func (d *kvDeltas) next(set kvSet, blockSize, capacity int) []byte {
	if !d.reset && !d.meta && len(d.order) == 0 {
		return nil
	}
	ev := stats.KVEvent{Pod: d.pod, BlockSize: blockSize, Capacity: capacity}
	if !d.reset {
		for _, h := range d.order {
			switch now, was := set.has(h), d.batch[h]; {
			case now && !was:
				ev.Added = append(ev.Added, h)
			case !now && was:
				ev.Removed = append(ev.Removed, h)
			}
		}
		// A delta larger than the whole set is better sent as a snapshot.
		d.reset = len(ev.Added)+len(ev.Removed) > set.size()+1
	}
	clear(d.batch)
	d.order = d.order[:0]
	if d.reset {
		ev.Reset, ev.Removed = true, nil
		ev.Added = set.appendAll(make([]uint64, 0, set.size()))
	} else if len(ev.Added) == 0 && len(ev.Removed) == 0 && !d.meta {
		return nil // every change cancelled out
	}
	d.reset, d.meta = false, false
	d.seq++
	ev.Seq = d.seq
	return kvMessage(&ev)
}

// snapshot is the whole set as a KV event at the current seq, for a new
// subscriber.
func (d *kvDeltas) snapshot(set kvSet, blockSize, capacity int) []byte {
	return kvMessage(&stats.KVEvent{
		Pod: d.pod, BlockSize: blockSize, Capacity: capacity, Seq: d.seq, Reset: true,
		Added: set.appendAll(make([]uint64, 0, set.size())),
	})
}

// kvMessage renders a KV event message.
func kvMessage(ev *stats.KVEvent) []byte {
	return stats.AppendKVMessage(make([]byte, 0, 96+21*(len(ev.Added)+len(ev.Removed))), ev)
}

// kvSource is a set of prompt blocks streamed to stats subscribers: the KV
// model or the engine's events.
type kvSource interface {
	// flush sends the changes batched since the last message, if any.
	flush()
	// changed receives once a change awaits a flush.
	changed() <-chan struct{}
	// subscribe registers a stats subscriber on h whose first messages are
	// stat and a snapshot of the set, atomically with respect to deltas.
	subscribe(h *hub, kill func(), stat []byte) *subscriber
	// len is the number of blocks in the set.
	len() int
}
