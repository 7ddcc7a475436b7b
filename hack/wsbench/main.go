// Command wsbench measures two ways for a fasthttp server to serve a
// WebSocket on its own port (issue 17), each in a server process of its own:
// "hijack", the activator's (activator/fast.go serveWebSocketFast: the
// request converted by fasthttpadaptor.ConvertRequest, the connection
// hijacked with no response and handed to gorilla's Upgrader through an
// http.ResponseWriter), and "fast", fasthttp/websocket's FastHTTPUpgrader.
// Both have the activator's fasthttp settings and 32 KiB upgrader buffers,
// and echo each message with the same loop. A gorilla client measures the
// server's CPU time (getrusage, asked over its standard input), bytes
// allocated and the wall time per upgrade (-n times connect, handshake and
// close handshake, -par at a time); its CPU time and bytes allocated per
// message (-conns connections each sending -msgs 200-byte JSON text
// messages, one at a time, each echoed); its VmRSS and live Go heap and
// stacks with -idle upgraded idle connections. Each measurement runs -runs
// times per server, each on a fresh server process, the servers' order
// alternating. -serve hijack|fast runs one server (the benchmark's child).
//
//	cd hack/wsbench && nice -n 10 go run .
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	fws "github.com/fasthttp/websocket"
	"github.com/gorilla/websocket"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"golang.org/x/sync/errgroup"
)

var (
	serveFlag = flag.String("serve", "", "run one server: hijack or fast")
	nFlag     = flag.Int("n", 5000, "upgrades per upgrade run")
	parFlag   = flag.Int("par", 8, "client workers dialling")
	connsFlag = flag.Int("conns", 200, "connections in the message run")
	msgsFlag  = flag.Int("msgs", 1000, "messages per connection in the message run")
	idleFlag  = flag.Int("idle", 2000, "idle connections in the memory run")
	runsFlag  = flag.Int("runs", 3, "runs of each measurement per server")
)

func main() {
	flag.Parse()
	run := bench
	if *serveFlag != "" {
		run = func() error { return serve(*serveFlag) }
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wsbench:", err)
		os.Exit(1)
	}
}

// echo sends every message back until the connection fails or closes.
func echo(c interface {
	ReadMessage() (int, []byte, error)
	WriteMessage(int, []byte) error
	Close() error
}) {
	defer c.Close()
	for {
		mt, p, err := c.ReadMessage()
		if err != nil || c.WriteMessage(mt, p) != nil {
			return
		}
	}
}

// The activator upgrader's buffers and origin check (done before it).
var (
	gorillaUpgrader = websocket.Upgrader{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10,
		CheckOrigin: func(*http.Request) bool { return true }}
	fastUpgrader = fws.FastHTTPUpgrader{ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10,
		CheckOrigin: func(*fasthttp.RequestCtx) bool { return true }}
)

func serveFast(ctx *fasthttp.RequestCtx) {
	_ = fastUpgrader.Upgrade(ctx, func(c *fws.Conn) { echo(c) })
}

// serveHijack is the activator's serveWebSocketFast without its tenant and
// origin checks.
func serveHijack(ctx *fasthttp.RequestCtx) {
	var r http.Request
	if err := fasthttpadaptor.ConvertRequest(ctx, &r, true); err != nil {
		ctx.Error("malformed request", http.StatusBadRequest)
		return
	}
	req := r.WithContext(context.Background())
	raw := ctx.Conn()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(conn net.Conn) {
		w := &hijackWriter{conn: halfCloser{Conn: conn, raw: raw}, h: http.Header{}}
		if c, err := gorillaUpgrader.Upgrade(w, req, nil); err == nil {
			echo(c)
		}
		w.finish()
	})
}

// halfCloser is the activator's hijacked connection that can close its
// writing side (never called here).
type halfCloser struct {
	net.Conn
	raw net.Conn
}

func (h halfCloser) CloseWrite() error { return errors.ErrUnsupported }

// hijackWriter is the activator's http.ResponseWriter of a hijacked
// connection, for gorilla's upgrader.
type hijackWriter struct {
	conn     net.Conn
	h        http.Header
	status   int
	body     bytes.Buffer
	hijacked bool
}

func (w *hijackWriter) Header() http.Header { return w.h }

func (w *hijackWriter) WriteHeader(code int) { w.status = cmp.Or(w.status, code) }

func (w *hijackWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(bufio.NewReader(w.conn), bufio.NewWriter(w.conn)), nil
}

// finish sends an answer written without a hijack (a refused upgrade).
func (w *hijackWriter) finish() {
	if w.hijacked {
		return
	}
	resp := http.Response{StatusCode: cmp.Or(w.status, http.StatusOK), ProtoMajor: 1, ProtoMinor: 1, Header: w.h,
		ContentLength: int64(w.body.Len()), Body: io.NopCloser(&w.body), Close: true}
	_ = w.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_ = resp.Write(w.conn)
}

// serve runs one server: it prints its address, then answers each line on
// its standard input with its CPU time so far (µs), bytes allocated so far,
// Go heap and stacks in use (bytes) and VmRSS (KiB), after a garbage
// collection if the line is "gc"; it ends at EOF.
func serve(name string) error {
	h := map[string]fasthttp.RequestHandler{"hijack": serveHijack, "fast": serveFast}[name]
	if h == nil {
		return fmt.Errorf("unknown server %q", name)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// pkg/httpserver.NewFast's settings, with httpserver.DefaultLimits.
	srv := &fasthttp.Server{Handler: h, ReadTimeout: 10 * time.Second, WriteTimeout: time.Minute,
		IdleTimeout: 5 * time.Minute, ReadBufferSize: 64 << 10, Concurrency: 10000, MaxRequestBodySize: 1,
		StreamRequestBody: true, DisablePreParseMultipartForm: true, NoDefaultServerHeader: true,
		NoDefaultContentType: true, CloseOnShutdown: true, SecureErrorLogMessage: true}
	go func() { _ = srv.Serve(ln) }()
	fmt.Println(ln.Addr())
	for sc := bufio.NewScanner(os.Stdin); sc.Scan(); {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return fmt.Errorf("getrusage: %w", err)
		}
		if sc.Text() == "gc" {
			runtime.GC()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st, _ := os.ReadFile("/proc/self/status")
		_, rss, _ := strings.Cut(string(st), "VmRSS:")
		fmt.Println((ru.Utime.Nano()+ru.Stime.Nano())/1e3, ms.TotalAlloc, ms.HeapAlloc+ms.StackInuse, rss[:strings.Index(rss, "kB")])
	}
	return nil
}

// server is a running server process.
type server struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	addr string
}

func start(name string) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("executable: %w", err)
	}
	s := &server{cmd: exec.Command(exe, "-serve", name)}
	s.cmd.Stderr = os.Stderr
	s.in, err = s.cmd.StdinPipe()
	out, err2 := s.cmd.StdoutPipe()
	if err = errors.Join(err, err2, s.cmd.Start()); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s.out = bufio.NewReader(out)
	s.addr, err = s.out.ReadString('\n')
	s.addr = "ws://" + strings.TrimSpace(s.addr) + "/v1/chat/completions"
	return s, err
}

// stats are a server's CPU time so far (µs), bytes allocated so far, Go
// heap and stacks in use (MiB) and VmRSS (MiB).
type stats struct{ cpu, alloc, heap, rss float64 }

// stat asks the server for its stats, after a garbage collection if gc.
func (s *server) stat(gc bool) (st stats, err error) {
	_, err = io.WriteString(s.in, map[bool]string{false: "\n", true: "gc\n"}[gc])
	l, err2 := s.out.ReadString('\n')
	if _, err3 := fmt.Sscan(l, &st.cpu, &st.alloc, &st.heap, &st.rss); err != nil || err2 != nil || err3 != nil {
		return st, fmt.Errorf("stat %q: %w", l, errors.Join(err, err2, err3))
	}
	st.heap, st.rss = st.heap/(1<<20), st.rss/1024
	return st, nil
}

func (s *server) stop() { s.in.Close(); _ = s.cmd.Wait() }

// msg is a 200-byte JSON text message.
var msg = []byte(`{"model":"m","request_id":"r1","messages":[{"role":"user","content":"` + strings.Repeat("x", 127) + `"}]}`)

// roundTrip sends msg on c and reads its echo.
func roundTrip(c *websocket.Conn) error {
	if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, p, err := c.ReadMessage(); err != nil || !bytes.Equal(p, msg) {
		return fmt.Errorf("echo: %w (%d bytes)", err, len(p))
	}
	return nil
}

// parallel runs f(i) for i in [0, n) on w goroutines at a time.
func parallel(n, w int, f func(i int) error) error {
	var g errgroup.Group
	g.SetLimit(w)
	for i := range n {
		g.Go(func() error { return f(i) })
	}
	return g.Wait()
}

// dial opens n connections, each having echoed one message.
func dial(s *server, n int) (conns []*websocket.Conn, closeAll func(), err error) {
	conns = make([]*websocket.Conn, n)
	closeAll = func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	return conns, closeAll, parallel(n, *parFlag, func(i int) (err error) {
		if conns[i], _, err = websocket.DefaultDialer.Dial(s.addr, nil); err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		return roundTrip(conns[i])
	})
}

// timed runs work and returns what the server spent on it (CPU µs, bytes
// allocated) and the wall time (s) it took.
func timed(s *server, work func() error) (d stats, wall float64, err error) {
	s0, err := s.stat(false)
	t0 := time.Now()
	err = errors.Join(err, work())
	wall = time.Since(t0).Seconds()
	s1, err2 := s.stat(false)
	return stats{cpu: s1.cpu - s0.cpu, alloc: s1.alloc - s0.alloc}, wall, errors.Join(err, err2)
}

// upgrades returns the server's CPU, its bytes allocated and the wall time
// (µs) per upgrade.
func upgrades(s *server) ([]float64, error) {
	cm := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	d, wall, err := timed(s, func() error {
		return parallel(*nFlag, *parFlag, func(int) error {
			c, _, err := websocket.DefaultDialer.Dial(s.addr, nil)
			if err != nil {
				return fmt.Errorf("dial: %w", err)
			}
			defer c.Close()
			_ = c.WriteControl(websocket.CloseMessage, cm, time.Now().Add(10*time.Second))
			if _, _, err := c.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				return fmt.Errorf("close handshake: %w", err)
			}
			return nil
		})
	})
	n := float64(*nFlag)
	return []float64{d.cpu / n, d.alloc / n, wall * 1e6 / n}, err
}

// messages returns the server's CPU per message (µs), its bytes allocated
// per message and messages a second.
func messages(s *server) ([]float64, error) {
	conns, closeAll, err := dial(s, *connsFlag)
	defer closeAll()
	if err != nil {
		return nil, err
	}
	d, wall, err := timed(s, func() error {
		return parallel(len(conns), len(conns), func(i int) error {
			for range *msgsFlag {
				if err := roundTrip(conns[i]); err != nil {
					return err
				}
			}
			return nil
		})
	})
	n := float64(len(conns) * *msgsFlag)
	return []float64{d.cpu / n, d.alloc / n, n / wall}, err
}

// idle returns the server's VmRSS and its live Go heap and stacks (MiB,
// after a garbage collection) with the idle connections, and its VmRSS
// before them.
func idle(s *server) ([]float64, error) {
	s0, err := s.stat(false)
	_, closeAll, err2 := dial(s, *idleFlag)
	defer closeAll()
	s1, err3 := s.stat(true)
	return []float64{s1.rss, s1.heap, s0.rss}, errors.Join(err, err2, err3)
}

func bench() error {
	measures := []struct {
		run   func(*server) ([]float64, error)
		units []string
	}{
		{upgrades, []string{"upgrade: server CPU µs", "upgrade: server bytes allocated", "upgrade: wall µs"}},
		{messages, []string{"message: server CPU µs", "message: server bytes allocated", "messages/s (wall)"}},
		{idle, []string{"idle: server VmRSS MiB", "idle: server live heap+stacks MiB", "server VmRSS MiB before"}},
	}
	fmt.Printf("n=%d par=%d conns=%d msgs=%d idle=%d runs=%d\n\n", *nFlag, *parFlag, *connsFlag, *msgsFlag, *idleFlag, *runsFlag)
	fmt.Println("| measurement | server | median | range | runs |\n| --- | --- | ---: | --- | --- |")
	names := []string{"hijack", "fast"}
	for _, m := range measures {
		vals := map[string][][]float64{} // server, unit, run
		for r := range *runsFlag {
			for j := range names {
				name := names[(j+r)%2] // hijack first in even runs, fast in odd ones
				s, err := start(name)
				if err != nil {
					return err
				}
				v, err := m.run(s)
				s.stop()
				if err != nil {
					return fmt.Errorf("%s on %s: %w", m.units[0], name, err)
				}
				vals[name] = append(vals[name], v)
			}
		}
		for i, unit := range m.units {
			for _, name := range names {
				var v, sorted = []string{}, []float64{}
				for _, run := range vals[name] {
					v, sorted = append(v, strconv.FormatFloat(run[i], 'f', 1, 64)), append(sorted, run[i])
				}
				slices.Sort(sorted)
				fmt.Printf("| %s | %s | %.1f | %.1f–%.1f | %s |\n", unit, name, sorted[len(sorted)/2],
					sorted[0], sorted[len(sorted)-1], strings.Join(v, ", "))
			}
		}
	}
	return nil
}
