// Package e2e holds end-to-end tests that run the real `kvasir` binary
// (`kvasir local` with simulator replicas) on loopback and talk to it with
// real clients: the official OpenAI Go SDK, WebSocket, raw HTTP.
package e2e
