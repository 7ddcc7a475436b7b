// Package kvevents follows the KV-cache events an inference engine publishes
// about its prefix cache, and decodes them.
//
// vLLM (--kv-events-config) and SGLang publish on a ZeroMQ PUB socket. Every
// message has three frames: the topic, an 8-byte big-endian sequence number
// that starts at 0 and rises by one per message, and a msgpack EventBatch.
// The batch is an array [ts, events, data_parallel_rank] (or, in some vLLM
// builds, a map with those keys). Each event is either an array whose first
// element is its type ("BlockStored", "BlockRemoved", "AllBlocksCleared") and
// whose other elements are its fields in order (SGLang, and vLLM before PR
// #42892), or a map with the type under "type" and named fields (vLLM since
// then). Decode reads all these forms and ignores fields it does not know.
//
// A Subscriber follows one endpoint with a ZeroMQ SUB socket, reconnects with
// back-off, reports gaps in the sequence numbers, and hands every decoded
// Batch to a function, one at a time. A Publisher publishes batches as vLLM
// does, for tests and for the engine simulator.
//
// Decode never trusts the lengths a payload declares: it refuses more than
// MaxEvents events, MaxBlocks hashes or MaxTokens token IDs in one event, and
// anything that cannot fit in the bytes that remain.
package kvevents
