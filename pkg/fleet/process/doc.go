// Package process is the local implementation of the fleet runtime: each
// replica is a queue-proxy process plus an engine process on free loopback
// ports. It probes replicas actively so a revision at zero is released the
// moment its first replica is ready, replaces crashed replicas (with
// back-off), drains replicas on scale-down, and stops them all on Close.
package process
