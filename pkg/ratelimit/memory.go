package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// memoryShards spreads keys over independent locks.
const memoryShards = 64

// sweepEvery is how many operations on a shard pass between two sweeps of
// its idle keys.
const sweepEvery = 1024

// Memory is the Backend of a single activator: the buckets of every key in
// this process, behind a mutex per shard of keys. Idle keys (every bucket
// full and no request in flight) are dropped by a periodic sweep.
type Memory struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [memoryShards]memoryShard
}

var _ Backend = (*Memory)(nil)

type memoryShard struct {
	mu   sync.Mutex
	keys map[string]*memoryEntry
	ops  int
}

type memoryEntry struct {
	tats     [numBuckets]float64
	inFlight int64
}

// NewMemory returns an empty in-memory backend. now is its clock; nil means
// time.Now.
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	m := &Memory{now: now, seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].keys = map[string]*memoryEntry{}
	}
	return m
}

func (m *Memory) shard(key string) *memoryShard {
	return &m.shards[maphash.String(m.seed, key)%memoryShards]
}

// Take implements Backend.
func (m *Memory) Take(_ context.Context, key string, limits Limits, cost Cost, _ string) (Outcome, error) {
	now := micros(m.now())
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maybeSweep(now)
	e := s.keys[key]
	if e == nil {
		e = &memoryEntry{}
		s.keys[key] = e
	}
	o := take(&e.tats, now, limits, cost, e.inFlight)
	if o.Allowed && limits.MaxConcurrentRequests > 0 {
		e.inFlight++
	}
	return o, nil
}

// Return implements Backend.
func (m *Memory) Return(_ context.Context, key string, limits Limits, refund Cost, _ string) error {
	now := micros(m.now())
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.keys[key]
	if e == nil { // swept while idle: an overuse still debits
		e = &memoryEntry{}
		s.keys[key] = e
	}
	give(&e.tats, now, limits, refund)
	if limits.MaxConcurrentRequests > 0 && e.inFlight > 0 {
		e.inFlight--
	}
	return nil
}

// Len reports how many keys the backend holds (idle ones until a sweep).
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.keys)
		s.mu.Unlock()
	}
	return n
}

// Sweep drops every idle key now.
func (m *Memory) Sweep() {
	now := micros(m.now())
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		s.sweep(now)
		s.mu.Unlock()
	}
}

func (s *memoryShard) maybeSweep(now float64) {
	if s.ops++; s.ops >= sweepEvery {
		s.sweep(now)
	}
}

func (s *memoryShard) sweep(now float64) {
	s.ops = 0
	for k, e := range s.keys {
		if e.inFlight == 0 && idle(&e.tats, now) {
			delete(s.keys, k)
		}
	}
}

func idle(tats *[numBuckets]float64, now float64) bool {
	for _, t := range tats {
		if t > now {
			return false
		}
	}
	return true
}
