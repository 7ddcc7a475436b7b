//go:build darwin || (linux && 386)

package httpserver

import (
	"errors"
	"syscall"
)

// peekClosed peeks one byte of the socket fd without consuming it or
// waiting: true when the peer shut its side down or the socket failed.
func peekClosed(fd uintptr) bool {
	var b [1]byte
	n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	switch {
	case err == nil:
		return n == 0 // EOF: the peer shut its side down
	case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EINTR):
		return false
	default:
		return true // reset, or another failure: nothing more will come
	}
}
