package activator_test

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/httpserver"
)

// testServer is a fasthttp handler served on loopback by
// httpserver.FastServer, as the activator's public listener is.
type testServer struct {
	URL string
	srv *httpserver.FastServer
}

func newFastServer(t testing.TB, h fasthttp.RequestHandler) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &testServer{URL: "http://" + ln.Addr().String(), srv: httpserver.NewFast(h, httpserver.DefaultLimits(), nil)}
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

func (s *testServer) Close() { _ = s.srv.Close() }
