package queueproxy

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// benchEngine is an engine that answers at once, on fasthttp so that its
// own cost stays small next to the proxy's: a chat completion (the 230-byte
// answer of `dataplane hops`), or a stream of five events when the body
// asks for one; /v1/models.
func benchEngine(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	events := []byte("data: " + chunkRole + "\n\n" + "data: " + chunkHel + "\n\n" + "data: " + chunkLo + "\n\n" +
		"data: " + chunkStop + "\n\n" + "data: " + chunkUsage + "\n\n" + "data: [DONE]\n\n")
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			switch {
			case ctx.IsPost() && bytes.Contains(ctx.PostBody(), []byte(`"stream":true`)):
				ctx.SetContentType("text/event-stream")
				ctx.Response.SetBodyStream(bytes.NewReader(events), -1)
			case ctx.IsPost():
				ctx.SetContentType("application/json")
				ctx.SetBodyString(completionBody)
			default:
				ctx.SetContentType("application/json")
				ctx.SetBodyString(`{"object":"list","data":[{"id":"m","object":"model"}]}`)
			}
		},
		NoDefaultServerHeader: true,
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

// BenchmarkHop is the whole queue-proxy hop of one request on loopback, with
// a fasthttp client and engine, the KV model on: a non-streamed chat
// completion (as `dataplane hops` sends), a streamed one (five events, usage
// hidden, trailer) and a GET of /v1/models (passed through). Allocations
// include the client's and the engine's, which are few.
func BenchmarkHop(b *testing.B) {
	eng := benchEngine(b)
	p, err := New(testConfig(b, eng, "--kv-block-size=16", "--kv-capacity-blocks=31250"), nil)
	require.NoError(b, err)
	addr := strings.TrimPrefix(listen(b, p).URL, "http://")
	client := &fasthttp.HostClient{Addr: addr, MaxConns: 64}
	chat := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("hello world ", 6) + `"}],"max_tokens":1}`
	for _, tc := range []struct {
		name, method, path, body string
	}{
		{"chat", "POST", pathChatCompletions, chat},
		{"chat-stream", "POST", pathChatCompletions, strings.Replace(chat, `"max_tokens":1`, `"max_tokens":1,"stream":true`, 1)},
		{"models", "GET", "/v1/models", ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.Header.SetMethod(tc.method)
			req.SetRequestURI("http://" + addr + tc.path)
			if tc.body != "" {
				req.Header.SetContentType("application/json")
				req.SetBodyString(tc.body)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := client.Do(req, resp); err != nil {
					b.Fatal(err)
				}
				if resp.StatusCode() != fasthttp.StatusOK {
					b.Fatalf("status %d: %s", resp.StatusCode(), resp.Body())
				}
			}
		})
	}
}
