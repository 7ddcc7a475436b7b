// Package lru holds List, a least-recently-used order over keys with a value
// each, kept in a slab of nodes linked by index so that touching a key
// allocates nothing once the slab has grown. It is what the scheduler's
// prefix cache and the queue-proxy's KV model keep their blocks in.
//
// A List is not safe for concurrent use; its owner locks around it.
package lru
