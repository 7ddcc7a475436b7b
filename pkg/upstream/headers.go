package upstream

import (
	"net/http"
	"strings"
)

// hopByHop are the headers that belong to one connection (RFC 9110 7.6.1).
var hopByHop = map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Connection": true,
	"Proxy-Authenticate": true, "Proxy-Authorization": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true}

// HopByHop reports whether header k belongs to one connection: one of RFC
// 9110's list, or one that the message's Connection header values name.
func HopByHop(k string, connection []string) bool {
	return hopByHop[k] || (len(connection) > 0 && listsToken(connection, k))
}

// CopyEndToEnd moves the end-to-end headers of src into dst. The values are
// shared, not copied: src must be a header nothing else will change (an
// upstream response's, for instance).
func CopyEndToEnd(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if !HopByHop(k, conn) {
			dst[k] = vv
		}
	}
}

// RemoveHopByHop deletes the hop-by-hop headers of h.
func RemoveHopByHop(h http.Header) {
	conn := h["Connection"]
	for k := range h {
		if HopByHop(k, conn) {
			delete(h, k)
		}
	}
}

// listsToken reports whether Connection header values name the header k.
func listsToken(values []string, k string) bool {
	for _, v := range values {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), k) {
				return true
			}
		}
	}
	return false
}
