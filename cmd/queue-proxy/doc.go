// Command queue-proxy is the sidecar in front of one inference engine; see
// package queueproxy, which owns all of it. This command only wires signals
// to queueproxy.Main and turns its result into an exit code.
package main
