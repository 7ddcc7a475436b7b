// Package stats owns the messages a queue-proxy streams to its subscribers
// (activators, the autoscaler) over WebSocket, and the path they are served on.
//
// Every message is a JSON envelope {"type": ..., ...} so that later kinds (KV
// block events) travel on the same connection without breaking old readers.
package stats
