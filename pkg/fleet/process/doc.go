// Package process is the local implementation of the fleet runtime: each
// replica is a queue-proxy process plus an engine process on free loopback
// ports. It probes replicas actively so a revision at zero is released the
// moment its first replica is ready, replaces crashed replicas (with
// back-off), drains replicas on scale-down, and stops them all on Close.
//
// A replica that is a serving group (Spec.Groups) runs one engine process
// per rank, each with its own ports and its share of the replica's devices
// (allocated all at once or not at all), and one queue-proxy in front of
// the leader, its only endpoint. The group is ready when the leader is, and
// is recovered as a unit: when any of its processes exits unexpectedly,
// every other is killed and the whole group is recreated.
package process
