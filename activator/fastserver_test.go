package activator

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
)

// fastServer serves a fasthttp handler on a loopback listener with
// httpserver.FastServer and the default limits, as the activator's public
// listener is served.
type fastServer struct {
	URL string
	srv *httpserver.FastServer
}

func newFastServer(t testing.TB, h fasthttp.RequestHandler) *fastServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &fastServer{URL: "http://" + ln.Addr().String(), srv: httpserver.NewFast(h, httpserver.DefaultLimits(), nil)}
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

// Close closes the listener and every connection.
func (s *fastServer) Close() { _ = s.srv.Close() }
