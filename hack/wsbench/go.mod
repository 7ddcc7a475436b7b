// wsbench measures the activator's WebSocket upgrade (a fasthttp hijack
// handed to gorilla's upgrader) against fasthttp/websocket's upgrader. A
// separate module, so fasthttp/websocket does not enter the main module;
// fasthttp, gorilla/websocket and x/sync are pinned to the main module's
// versions.
module github.com/kvasir-serving/kvasir/hack/wsbench

go 1.26.8

require (
	github.com/fasthttp/websocket v1.5.12
	github.com/gorilla/websocket v1.5.4-0.20250319132907-e064f32e3674
	github.com/valyala/fasthttp v1.79.0
	golang.org/x/sync v0.24.0
)

require (
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/molecule-man/go-brrr v1.3.1 // indirect
	github.com/savsgio/gotils v0.0.0-20240704082632-aef3928b8a38 // indirect
	github.com/valyala/bytebufferpool v1.0.0 // indirect
	golang.org/x/net v0.62.0 // indirect
)
