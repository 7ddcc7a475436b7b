package upstream

import "bytes"

// IsHopByHop reports whether the header named k (in any case) belongs to
// one connection: one of RFC 9110's list (7.6.1), or one that the message's
// Connection header values name. It is HopByHop for headers held as bytes
// (fasthttp's), and allocates nothing.
func IsHopByHop(k []byte, connection [][]byte) bool {
	var hop bool
	switch len(k) {
	case 2:
		hop = bytes.EqualFold(k, []byte("Te"))
	case 7:
		hop = bytes.EqualFold(k, []byte("Trailer")) || bytes.EqualFold(k, []byte("Upgrade"))
	case 10:
		hop = bytes.EqualFold(k, []byte("Connection")) || bytes.EqualFold(k, []byte("Keep-Alive"))
	case 16:
		hop = bytes.EqualFold(k, []byte("Proxy-Connection"))
	case 17:
		hop = bytes.EqualFold(k, []byte("Transfer-Encoding"))
	case 18:
		hop = bytes.EqualFold(k, []byte("Proxy-Authenticate"))
	case 19:
		hop = bytes.EqualFold(k, []byte("Proxy-Authorization"))
	}
	return hop || (len(connection) > 0 && listsTokenBytes(connection, k))
}

// listsTokenBytes reports whether Connection header values name k.
func listsTokenBytes(values [][]byte, k []byte) bool {
	for _, v := range values {
		for len(v) > 0 {
			f := v
			if i := bytes.IndexByte(v, ','); i >= 0 {
				f, v = v[:i], v[i+1:]
			} else {
				v = nil
			}
			if bytes.EqualFold(bytes.TrimSpace(f), k) {
				return true
			}
		}
	}
	return false
}
