//go:build !linux && !darwin

package httpserver

import "net"

// PeerClosed reports whether the peer of c closed its side of the
// connection. On this platform it cannot tell without reading, and always
// reports false: a client that goes away is noticed only when writing to it
// fails.
func PeerClosed(c net.Conn) bool { return false }
