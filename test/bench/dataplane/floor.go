package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvasir-serving/kvasir/pkg/rawconn"
)

// floorProxy is the `floor-proxy` subcommand: the minimal fasthttp proxy
// that issue 17 takes as the floor of a Go hop's CPU per request. A
// fasthttp server forwards every request, whole, to one upstream over
// keep-alive connections (fasthttp.HostClient) and answers with the whole
// response: no routing, no metrics, no streaming. `hops` starts it as its
// own process so that its CPU is measured like nginx's.
func floorProxy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("floor-proxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to serve on")
	upstream := fs.String("upstream", "", "host:port every request is forwarded to")
	raw := fs.Bool("raw-syscalls", false, "read and write both sides with raw system calls (pkg/rawconn), as the activator and the queue-proxy do")
	_ = fs.Parse(args)
	if *upstream == "" {
		return errors.New("floor-proxy: --upstream is required")
	}
	ln, err := net.Listen("tcp4", *listen)
	if err != nil {
		return fmt.Errorf("floor-proxy: %w", err)
	}
	srv := newFloorServer(*upstream, *raw)
	if *raw {
		ln = rawListener{ln}
	}
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown()
	}()
	return srv.Serve(ln)
}

// newFloorServer is the floor proxy's server, forwarding to upstream; raw:
// its upstream connections read and write with raw system calls.
func newFloorServer(upstream string, raw bool) *fasthttp.Server {
	// Like nginx's upstream (whose keepalive 1024 bounds only the idle
	// connections), the floor opens as many connections as it has
	// requests in flight: a stall of the machine at 1,000 req/s can put
	// more than a thousand in flight.
	client := &fasthttp.HostClient{
		Addr:                     upstream,
		MaxConns:                 1 << 16,
		MaxConnWaitTimeout:       30 * time.Second,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
	}
	if raw {
		client.Dial = func(addr string) (net.Conn, error) {
			c, err := fasthttp.Dial(addr)
			if err != nil {
				return nil, err
			}
			return rawconn.Wrap(c), nil
		}
	}
	return &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			// Connection is hop-by-hop: the client's must not close the
			// upstream connection, nor the upstream's the client's.
			ctx.Request.Header.Del("Connection")
			if err := client.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.Response.Reset()
				ctx.Error("floor-proxy: upstream: "+err.Error(), fasthttp.StatusBadGateway)
				return
			}
			ctx.Response.Header.Del("Connection")
		},
		NoDefaultServerHeader: true,
	}
}

// rawListener accepts connections that read and write with raw system
// calls.
type rawListener struct{ net.Listener }

func (l rawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return rawconn.Wrap(c), nil
}
