package httpserver

import "net"

// unwrapConn returns the connection under the wrappers of c that say what
// they wrap (a NetConn method, as this package's and crypto/tls's have).
func unwrapConn(c net.Conn) net.Conn {
	for range 8 {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return c
		}
		c = u.NetConn()
	}
	return c
}
