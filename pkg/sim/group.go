package sim

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// GroupExitCode is the exit status of a member of a serving group whose
// group broke: a leader one of whose workers went away, or a worker whose
// leader went away. The runtime then recreates the whole group.
const GroupExitCode = 4

// The group protocol: a worker dials the leader's group port, sends one
// hello line and reads one answer line; then the connection stays open
// and silent until one side goes away.
const (
	// groupProto starts every hello line.
	groupProto = "KVASIR-SIM-GROUP/1"
	// maxHelloBytes bounds a hello line, its newline included.
	maxHelloBytes = 512
	// maxAnswerBytes bounds the leader's answer line.
	maxAnswerBytes = 256
	// handshakeTimeout bounds a whole handshake, on both sides.
	handshakeTimeout = 5 * time.Second
	// maxPendingHandshakes bounds the connections the leader holds before
	// their hello is accepted; more are closed at once.
	maxPendingHandshakes = 16
	// workerDialTimeout bounds one connection attempt of a worker.
	workerDialTimeout = 2 * time.Second
	// workerBackoffMin and workerBackoffMax bound a worker's wait between
	// attempts while its leader is not up: it doubles from min to max.
	workerBackoffMin = 20 * time.Millisecond
	workerBackoffMax = 250 * time.Millisecond
)

// GroupConfig is an engine's place in a serving group of Size processes:
// rank 0, the leader, serves the API and waits for its Size−1 workers on
// the port of LeaderAddress; a worker (rank above 0) serves nothing and
// stays connected to its leader.
type GroupConfig struct {
	// Size is the number of processes of the group (--group-size).
	Size int
	// Rank is this process's place in it (--rank), 0 for the leader.
	Rank int
	// LeaderAddress is the leader's group address, HOST:PORT on loopback
	// (--leader-address): the leader listens there, workers dial it.
	LeaderAddress string
	// Remote (--group-remote) is for a group spread over pods (Kubernetes,
	// a LeaderWorkerSet): LeaderAddress's host may then be any host name or
	// IP address, which workers dial, and the leader listens on every
	// interface at its port. Without it the group stays on loopback.
	Remote bool
}

// registerFlags registers the group flags.
func (g *GroupConfig) registerFlags(fs *flag.FlagSet) {
	fs.IntVar(&g.Size, "group-size", g.Size, "processes of the serving group this engine belongs to (1: a lone engine)")
	fs.IntVar(&g.Rank, "rank", g.Rank, "this engine's rank in its serving group: 0 is the leader (serves the API), others are workers")
	fs.StringVar(&g.LeaderAddress, "leader-address", g.LeaderAddress,
		"HOST:PORT of the group's leader on loopback: the leader listens there for its workers, workers connect to it")
	fs.BoolVar(&g.Remote, "group-remote", g.Remote,
		"the group spans pods: --leader-address may name any host, and the leader listens on every interface at its port")
}

// grouped reports whether the engine is part of a group of several.
func (g GroupConfig) grouped() bool { return g.Size > 1 }

// worker reports whether the engine is a worker of a group.
func (g GroupConfig) worker() bool { return g.grouped() && g.Rank > 0 }

// validateGroup checks the group flags against each other and the
// parallelism: a group splits tensor × pipeline × data evenly.
func (c Config) validateGroup(p *flagProblems) {
	g := c.Group
	if g.Size < 1 || g.Size > maxParallel {
		p.bad("group-size", g.Size, fmt.Sprintf("must be in 1..%d", maxParallel))
		return
	}
	if g.Rank < 0 || g.Rank >= g.Size {
		p.bad("rank", g.Rank, fmt.Sprintf("must be in 0..%d (--group-size %d)", g.Size-1, g.Size))
	}
	if g.Size == 1 {
		if g.LeaderAddress != "" {
			p.bad("leader-address", strconv.Quote(g.LeaderAddress), "needs --group-size above 1")
		}
		return
	}
	if acc := c.Parallel.accelerators(); acc >= 1 && acc%int64(g.Size) != 0 {
		p.bad("group-size", g.Size, fmt.Sprintf("must divide tensor × pipeline × data (%d): every process of a group holds as many accelerators", acc))
	}
	if _, _, err := groupAddress(g.LeaderAddress, g.Remote); err != nil {
		p.bad("leader-address", strconv.Quote(g.LeaderAddress), err.Error())
	}
}

// groupAddress checks a leader address and returns the address workers
// dial and the one the leader listens on: a port in 1..65535, and a host on
// loopback ("localhost" is 127.0.0.1), or, when remote, any host name or IP
// address, the leader then listening on every interface at the port.
func groupAddress(addr string, remote bool) (dial, listen string, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", errors.New("want HOST:PORT")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return "", "", errors.New("want a port in 1..65535")
	}
	if remote {
		if net.ParseIP(host) == nil && !isHostName(host) {
			return "", "", errors.New("want a host name or an IP address")
		}
		return net.JoinHostPort(host, port), net.JoinHostPort("", port), nil
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", "", errors.New("the group listens on loopback only (--group-remote for a group over pods): want 127.0.0.1, ::1 or localhost")
	}
	return net.JoinHostPort(host, port), net.JoinHostPort(host, port), nil
}

// isHostName reports whether s is a DNS host name: dot-separated labels of
// letters, digits and inner hyphens, 1 to 63 bytes each, 253 in all.
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// hello is a worker's handshake: who it is and the group it belongs to.
type hello struct {
	Size, Rank, Tensor, Pipeline, Data int
	Model                              string
}

// helloOf is the hello of cfg's engine.
func helloOf(cfg Config) hello {
	return hello{Size: cfg.Group.Size, Rank: cfg.Group.Rank, Tensor: cfg.Parallel.Tensor, Pipeline: cfg.Parallel.Pipeline,
		Data: cfg.Parallel.Data, Model: cfg.Model}
}

// line is the hello on the wire, newline included.
func (h hello) line() string {
	return fmt.Sprintf("%s size=%d rank=%d tp=%d pp=%d dp=%d model=%s\n", groupProto, h.Size, h.Rank, h.Tensor, h.Pipeline,
		h.Data, strconv.Quote(h.Model))
}

// parseHello reads a hello line (without its newline), strictly: the
// protocol, then each field in its place, numbers in canonical decimal.
func parseHello(line string) (hello, error) {
	rest, ok := strings.CutPrefix(line, groupProto+" ")
	if !ok {
		return hello{}, errors.New("not a group hello")
	}
	var h hello
	for _, f := range []struct {
		key string
		v   *int
	}{{"size", &h.Size}, {"rank", &h.Rank}, {"tp", &h.Tensor}, {"pp", &h.Pipeline}, {"dp", &h.Data}} {
		var field string
		field, rest, ok = strings.Cut(rest, " ")
		value, found := strings.CutPrefix(field, f.key+"=")
		if !ok || !found {
			return hello{}, fmt.Errorf("want %s=N", f.key)
		}
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 || n > maxParallel || strconv.Itoa(n) != value {
			return hello{}, fmt.Errorf("%s: want 0..%d", f.key, maxParallel)
		}
		*f.v = n
	}
	quoted, ok := strings.CutPrefix(rest, "model=")
	if !ok {
		return hello{}, errors.New("want model=\"NAME\"")
	}
	model, err := strconv.Unquote(quoted)
	if err != nil || !strings.HasPrefix(quoted, `"`) {
		return hello{}, errors.New("model: want a quoted name")
	}
	h.Model = model
	return h, nil
}

// readLine reads one line of at most limit bytes (its newline included)
// from r and returns it without the newline.
func readLine(r io.Reader, limit int) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, int64(limit)), 64)
	line, err := br.ReadString('\n')
	switch {
	case err == nil:
		return strings.TrimSuffix(line, "\n"), nil
	case errors.Is(err, io.EOF) && len(line) == limit:
		return "", fmt.Errorf("line longer than %d bytes", limit)
	}
	return "", err
}

// groupLeader is the leader's side of a group: it accepts its workers'
// connections on the group port, checks their hellos, and fails the group
// when a worker that joined goes away.
type groupLeader struct {
	want    hello         // the group's hello, but for the rank
	timeout time.Duration // of a handshake
	ln      net.Listener
	log     *slog.Logger
	sem     chan struct{} // a slot per handshake under way
	wg      sync.WaitGroup

	failed   chan struct{} // closed when the group fails
	failOnce sync.Once

	mu      sync.Mutex
	workers map[int]bool          // ranks joined
	conns   map[net.Conn]struct{} // every connection held
	closed  bool
	reason  string // why the group failed
}

// listenGroup starts the leader's side of cfg's group: it listens on the
// leader address and accepts workers, each with timeout for its
// handshake, until close.
func listenGroup(cfg Config, log *slog.Logger, timeout time.Duration) (*groupLeader, error) {
	_, addr, err := groupAddress(cfg.Group.LeaderAddress, cfg.Group.Remote)
	if err != nil {
		return nil, fmt.Errorf("engine-sim --leader-address: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("engine-sim group listen: %w", err)
	}
	l := &groupLeader{want: helloOf(cfg), timeout: timeout, ln: ln, log: log, sem: make(chan struct{}, maxPendingHandshakes),
		failed: make(chan struct{}), workers: map[int]bool{}, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	log.Info("serving group: waiting for workers", "addr", ln.Addr().String(), "workers", cfg.Group.Size-1)
	return l, nil
}

// addr is where the leader listens.
func (l *groupLeader) addr() net.Addr { return l.ln.Addr() }

// accept hands each connection to a handshake while slots are free and
// closes the others at once.
func (l *groupLeader) accept() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// A passing failure (out of file descriptors, an aborted
			// connection) must not end the admission of workers: back off
			// as net/http's server does, up to a second, and go on.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("serving group: accept failed; retrying", "error", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		select {
		case l.sem <- struct{}{}:
		default:
			l.log.Warn("serving group: too many handshakes under way; connection closed", "remote", c.RemoteAddr().String())
			_ = c.Close()
			continue
		}
		if !l.track(c) {
			<-l.sem
			_ = c.Close()
			return
		}
		l.wg.Add(1)
		go l.serve(c)
	}
}

// track records a connection, unless the leader is closed.
func (l *groupLeader) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

// serve runs one worker's handshake, then waits for it to go away.
func (l *groupLeader) serve(c net.Conn) {
	defer l.wg.Done()
	defer func() {
		_ = c.Close()
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
	}()
	rank, err := l.handshake(c)
	<-l.sem
	if err != nil {
		l.log.Warn("serving group: refused a worker", "remote", c.RemoteAddr().String(), "error", err)
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(c, "ERR "+strings.ReplaceAll(err.Error(), "\n", " ")+"\n")
		return
	}
	connected, want := l.progress()
	l.log.Info("serving group: worker joined", "rank", rank, "connected", connected, "workers", want)
	// A worker never writes after its handshake: any read's end (EOF, an
	// error, or bytes it should not send) is the worker gone.
	var b [1]byte
	_, err = c.Read(b[:])
	l.mu.Lock()
	closing := l.closed
	delete(l.workers, rank)
	l.mu.Unlock()
	if !closing {
		l.fail(fmt.Sprintf("worker rank %d left the serving group (%v)", rank, err))
	}
}

// handshake reads and checks a hello within l.timeout, records the
// worker's rank and answers OK. It returns the rank; on error nothing is
// recorded.
func (l *groupLeader) handshake(c net.Conn) (int, error) {
	_ = c.SetDeadline(time.Now().Add(l.timeout))
	line, err := readLine(c, maxHelloBytes)
	if err != nil {
		return 0, fmt.Errorf("reading the hello: %w", err)
	}
	h, err := parseHello(line)
	if err != nil {
		return 0, fmt.Errorf("malformed hello: %w", err)
	}
	if err := l.check(h); err != nil {
		return 0, err
	}
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return 0, errors.New("the leader is stopping")
	case l.workers[h.Rank]:
		l.mu.Unlock()
		return 0, fmt.Errorf("rank %d has joined already", h.Rank)
	}
	l.workers[h.Rank] = true
	l.mu.Unlock()
	if _, err := io.WriteString(c, "OK\n"); err != nil {
		l.mu.Lock()
		delete(l.workers, h.Rank)
		l.mu.Unlock()
		return 0, fmt.Errorf("answering: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return h.Rank, nil
}

// check compares a hello with the group's.
func (l *groupLeader) check(h hello) error {
	w := l.want
	switch {
	case h.Model != w.Model:
		return fmt.Errorf("model %q is not the group's %q", h.Model, w.Model)
	case h.Size != w.Size:
		return fmt.Errorf("group size %d is not the group's %d", h.Size, w.Size)
	case h.Rank < 1 || h.Rank >= w.Size:
		return fmt.Errorf("rank %d out of 1..%d", h.Rank, w.Size-1)
	case h.Tensor != w.Tensor || h.Pipeline != w.Pipeline || h.Data != w.Data:
		return fmt.Errorf("parallelism tp=%d pp=%d dp=%d is not the group's tp=%d pp=%d dp=%d",
			h.Tensor, h.Pipeline, h.Data, w.Tensor, w.Pipeline, w.Data)
	}
	return nil
}

// fail marks the group failed, once.
func (l *groupLeader) fail(reason string) {
	l.failOnce.Do(func() {
		l.mu.Lock()
		l.reason = reason
		l.mu.Unlock()
		l.log.Error("serving group failed", "reason", reason)
		close(l.failed)
	})
}

// Failed is closed when the group has failed.
func (l *groupLeader) Failed() <-chan struct{} { return l.failed }

// progress returns the workers joined and the workers the group has.
func (l *groupLeader) progress() (connected, want int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.workers), l.want.Size - 1
}

// notReady says why the group cannot serve ("" when it can): it failed,
// or workers are still missing.
func (l *groupLeader) notReady() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reason != "" {
		return "the serving group failed: " + l.reason
	}
	want := l.want.Size - 1
	if missing := want - len(l.workers); missing > 0 {
		return fmt.Sprintf("waiting for %d of %d workers to connect", missing, want)
	}
	return ""
}

// failure is why the group failed ("" while it has not).
func (l *groupLeader) failure() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reason
}

// close stops accepting, closes every connection and waits for the
// handshakes and watches to end.
func (l *groupLeader) close() {
	l.mu.Lock()
	l.closed = true
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	_ = l.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	l.wg.Wait()
}

// errRefused is a leader's refusal of a worker: retrying cannot help.
type errRefused struct{ msg string }

func (e errRefused) Error() string { return e.msg }

// runWorker is a worker's life: it joins its leader, retrying with a
// bounded back-off while the leader is not up, then stays connected. It
// returns nil when ctx ends, an *ExitError with GroupExitCode when the
// leader goes away, and an error when the leader refuses it.
func runWorker(ctx context.Context, cfg Config, log *slog.Logger) error {
	addr, _, err := groupAddress(cfg.Group.LeaderAddress, cfg.Group.Remote)
	if err != nil {
		return fmt.Errorf("engine-sim --leader-address: %w", err)
	}
	h := helloOf(cfg)
	log.Info("serving group: worker joining its leader", "leader", addr, "rank", h.Rank, "size", h.Size)
	backoff := workerBackoffMin
	var c net.Conn
	for {
		c, err = joinGroup(ctx, addr, h)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		if refused, ok := errors.AsType[errRefused](err); ok {
			return fmt.Errorf("engine-sim: the leader at %s refused rank %d: %w", addr, h.Rank, refused)
		}
		log.Debug("serving group: leader not up yet", "leader", addr, "error", err, "retry", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, workerBackoffMax)
	}
	log.Info("serving group: worker joined", "leader", addr, "rank", h.Rank)
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	var b [1]byte
	_, err = c.Read(b[:]) // the leader never writes after its answer
	_ = c.Close()
	if ctx.Err() != nil {
		return nil
	}
	log.Error("serving group: the leader went away", "leader", addr, "error", err)
	return &ExitError{Code: GroupExitCode, Reason: "the serving group's leader went away"}
}

// joinGroup dials the leader and runs the worker's side of the handshake.
// A refusal, or an answer that is not the protocol's, is an errRefused;
// other errors (the leader not listening yet, or closing the connection)
// may pass on a retry.
func joinGroup(ctx context.Context, addr string, h hello) (net.Conn, error) {
	d := net.Dialer{Timeout: workerDialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	if _, err := io.WriteString(c, h.line()); err != nil {
		_ = c.Close()
		return nil, err
	}
	answer, err := readLine(c, maxAnswerBytes)
	if err != nil {
		_ = c.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, err // closed before answering: a leader starting or stopping
		}
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return nil, err
		}
		return nil, errRefused{msg: "reading the answer: " + err.Error()}
	}
	switch {
	case answer == "OK":
		_ = c.SetDeadline(time.Time{})
		return c, nil
	case strings.HasPrefix(answer, "ERR "):
		_ = c.Close()
		return nil, errRefused{msg: strings.TrimPrefix(answer, "ERR ")}
	}
	_ = c.Close()
	return nil, errRefused{msg: fmt.Sprintf("not a simulator group leader (answered %.40q)", answer)}
}
