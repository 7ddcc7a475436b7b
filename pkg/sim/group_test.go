package sim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseHello(t *testing.T) {
	good := hello{Size: 2, Rank: 1, Tensor: 2, Pipeline: 1, Data: 1, Model: "demo"}
	for _, tc := range []struct {
		name, line string
		want       hello
		err        string
	}{
		{name: "round trip", line: strings.TrimSuffix(good.line(), "\n"), want: good},
		{name: "a model with spaces and quotes", line: `KVASIR-SIM-GROUP/1 size=2 rank=1 tp=2 pp=1 dp=1 model="a \"b\" c"`,
			want: hello{Size: 2, Rank: 1, Tensor: 2, Pipeline: 1, Data: 1, Model: `a "b" c`}},
		{name: "another protocol", line: `KVASIR-SIM-GROUP/2 size=2 rank=1 tp=2 pp=1 dp=1 model="demo"`, err: "not a group hello"},
		{name: "garbage", line: "GET / HTTP/1.1", err: "not a group hello"},
		{name: "empty", line: "", err: "not a group hello"},
		{name: "fields out of order", line: `KVASIR-SIM-GROUP/1 rank=1 size=2 tp=2 pp=1 dp=1 model="demo"`, err: "want size=N"},
		{name: "a field missing", line: `KVASIR-SIM-GROUP/1 size=2 rank=1 tp=2 dp=1 model="demo"`, err: "want pp=N"},
		{name: "a sign", line: `KVASIR-SIM-GROUP/1 size=+2 rank=1 tp=2 pp=1 dp=1 model="demo"`, err: "size: want"},
		{name: "a leading zero", line: `KVASIR-SIM-GROUP/1 size=2 rank=01 tp=2 pp=1 dp=1 model="demo"`, err: "rank: want"},
		{name: "negative", line: `KVASIR-SIM-GROUP/1 size=2 rank=-1 tp=2 pp=1 dp=1 model="demo"`, err: "rank: want"},
		{name: "huge", line: `KVASIR-SIM-GROUP/1 size=99999999999999999999 rank=1 tp=2 pp=1 dp=1 model="demo"`, err: "size: want"},
		{name: "above the bound", line: `KVASIR-SIM-GROUP/1 size=1025 rank=1 tp=2 pp=1 dp=1 model="demo"`, err: "size: want"},
		{name: "two spaces", line: `KVASIR-SIM-GROUP/1 size=2  rank=1 tp=2 pp=1 dp=1 model="demo"`, err: "want rank=N"},
		{name: "an unquoted model", line: `KVASIR-SIM-GROUP/1 size=2 rank=1 tp=2 pp=1 dp=1 model=demo`, err: "quoted"},
		{name: "junk after the model", line: `KVASIR-SIM-GROUP/1 size=2 rank=1 tp=2 pp=1 dp=1 model="demo" x=1`, err: "quoted"},
		{name: "no model", line: `KVASIR-SIM-GROUP/1 size=2 rank=1 tp=2 pp=1 dp=1`, err: "want dp=N"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseHello(tc.line)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, h)
		})
	}
}

// groupConfig is the config of rank in a group of size on port.
func groupConfig(size, rank, port int) Config {
	c := DefaultConfig()
	c.Model = "demo"
	c.Parallel.Tensor = size
	c.Group = GroupConfig{Size: size, Rank: rank, LeaderAddress: "127.0.0.1:" + strconv.Itoa(port)}
	return c
}

// testLeader listens as the leader of a group of size.
func testLeader(t *testing.T, size int, timeout time.Duration) (*groupLeader, int) {
	t.Helper()
	port := freePort(t)
	l, err := listenGroup(groupConfig(size, 0, port), slog.New(slog.DiscardHandler), timeout)
	require.NoError(t, err)
	t.Cleanup(l.close)
	return l, port
}

// dialHello sends raw bytes to the leader and returns its answer line
// ("" when it closed without one).
func dialHello(t *testing.T, port int, raw string) (string, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, _ = io.WriteString(c, raw)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), c
}

// The leader refuses every hello that is not one of its group's workers,
// and no refusal counts as a worker.
func TestLeaderRefusesHostileHandshakes(t *testing.T) {
	l, port := testLeader(t, 3, 10*time.Second)
	h := func(mod func(*hello)) string {
		x := helloOf(groupConfig(3, 1, port))
		mod(&x)
		return x.line()
	}
	for _, tc := range []struct {
		name, raw, err string
	}{
		{name: "garbage", raw: "\x00\x01\x02 hello\n", err: "malformed hello"},
		{name: "HTTP", raw: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", err: "malformed hello"},
		{name: "oversized", raw: strings.Repeat("A", 4096), err: "longer than 512 bytes"},
		{name: "wrong size", raw: h(func(x *hello) { x.Size = 2 }), err: "group size 2 is not the group's 3"},
		{name: "rank 0", raw: h(func(x *hello) { x.Rank = 0 }), err: "rank 0 out of 1..2"},
		{name: "rank out of range", raw: h(func(x *hello) { x.Rank = 3 }), err: "rank 3 out of 1..2"},
		{name: "another model", raw: h(func(x *hello) { x.Model = "other" }), err: `model "other" is not the group's "demo"`},
		{name: "another parallelism", raw: h(func(x *hello) { x.Tensor = 1; x.Data = 3 }), err: "parallelism tp=1 pp=1 dp=3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer, _ := dialHello(t, port, tc.raw)
			require.True(t, strings.HasPrefix(answer, "ERR "), "answer %q", answer)
			require.Contains(t, answer, tc.err)
		})
	}
	connected, want := l.progress()
	require.Equal(t, 0, connected)
	require.Equal(t, 2, want)
	require.Equal(t, "waiting for 2 of 2 workers to connect", l.notReady())
	select {
	case <-l.Failed():
		t.Fatal("a refused handshake failed the group")
	default:
	}

	// A rank joins once: the second hello of rank 1 is refused while the
	// first stays connected.
	answer, first := dialHello(t, port, h(func(*hello) {}))
	require.Equal(t, "OK", answer)
	answer, _ = dialHello(t, port, h(func(*hello) {}))
	require.Equal(t, "ERR rank 1 has joined already", answer)
	require.Equal(t, "waiting for 1 of 2 workers to connect", l.notReady())
	answer, _ = dialHello(t, port, h(func(x *hello) { x.Rank = 2 }))
	require.Equal(t, "OK", answer)
	require.Empty(t, l.notReady(), "every worker has joined")

	// A joined worker that leaves fails the group for good.
	require.NoError(t, first.Close())
	select {
	case <-l.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("the group did not fail when a worker left")
	}
	require.Contains(t, l.notReady(), "worker rank 1 left the serving group")
}

// A handshake that does not finish within the deadline is dropped, and
// connections beyond maxPendingHandshakes are closed at once.
func TestLeaderBoundsSlowAndManyHandshakes(t *testing.T) {
	l, port := testLeader(t, 2, 200*time.Millisecond)
	slow, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	require.NoError(t, err)
	defer slow.Close()
	_, _ = io.WriteString(slow, groupProto) // never a newline
	_ = slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(slow).ReadString('\n')
	require.NoError(t, err, "the leader answers, then closes")
	require.Contains(t, line, "ERR reading the hello")
	_, err = slow.Read(make([]byte, 1))
	require.Error(t, err, "the slow connection is closed")

	l2, port2 := testLeader(t, 2, 10*time.Second)
	var held []net.Conn
	for range maxPendingHandshakes {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port2))
		require.NoError(t, err)
		defer c.Close()
		held = append(held, c)
	}
	require.Eventually(t, func() bool { return len(l2.sem) == maxPendingHandshakes }, 10*time.Second, time.Millisecond)
	extra, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port2))
	require.NoError(t, err)
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := extra.Read(make([]byte, 1))
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF, "a connection beyond the bound is closed at once")
	held[0].Close()
	require.Eventually(t, func() bool { return len(l2.sem) < maxPendingHandshakes }, 10*time.Second, time.Millisecond)
	answer, _ := dialHello(t, port2, helloOf(groupConfig(2, 1, port2)).line())
	require.Equal(t, "OK", answer, "a slot freed lets a worker join")
	_ = l
}

// A worker retries until its leader is up, stays connected, and exits with
// GroupExitCode when the leader goes away; cancelled, it returns nil.
func TestWorkerJoinsLeaderAndFollowsIt(t *testing.T) {
	port := freePort(t)
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runWorker(ctx, groupConfig(2, 1, port), log) }()

	l, err := listenGroup(groupConfig(2, 0, port), log, time.Second) // after the worker's first attempts
	require.NoError(t, err)
	require.Eventually(t, func() bool { return l.notReady() == "" }, 10*time.Second, time.Millisecond)
	l.close()
	select {
	case err := <-done:
		exit, ok := errors.AsType[*ExitError](err)
		require.True(t, ok, "%v", err)
		require.Equal(t, GroupExitCode, exit.Code)
	case <-time.After(10 * time.Second):
		t.Fatal("the worker outlived its leader")
	}

	// Cancelled while waiting for a leader that never comes: nil.
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { done <- runWorker(ctx2, groupConfig(2, 1, freePort(t)), log) }()
	cancel2()
	require.NoError(t, <-done)

	// Refused (another model's leader): an error at once, no retry.
	l3, port3 := testLeader(t, 2, time.Second)
	other := groupConfig(2, 1, port3)
	other.Model = "other"
	err = runWorker(context.Background(), other, log)
	require.ErrorContains(t, err, "refused rank 1")
	require.ErrorContains(t, err, `model "other"`)
	_, isExit := errors.AsType[*ExitError](err)
	require.False(t, isExit)
	require.Equal(t, "waiting for 1 of 1 workers to connect", l3.notReady())

	// Something else on the port: not a leader, no retry.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
			c.Close()
		}
	}()
	err = runWorker(context.Background(), groupConfig(2, 1, ln.Addr().(*net.TCPAddr).Port), log)
	require.ErrorContains(t, err, "not a simulator group leader")
}

// Through Main: the leader answers 503 naming the missing workers, serves
// once its worker has joined, and exits with GroupExitCode when the worker
// goes; the worker serves no API.
func TestMainGroupLeaderWaitsForWorkers(t *testing.T) {
	groupPort, apiPort, workerPort := freePort(t), freePort(t), freePort(t)
	leaderArgs := []string{"--port", strconv.Itoa(apiPort), "--model", "demo", "--tensor-parallel-size", "2",
		"--group-size", "2", "--rank", "0", "--leader-address", "127.0.0.1:" + strconv.Itoa(groupPort)}
	leaderDone := make(chan error, 1)
	go func() { leaderDone <- Main(context.Background(), leaderArgs, &bytes.Buffer{}) }()
	base := "http://127.0.0.1:" + strconv.Itoa(apiPort)
	var body string
	require.Eventually(t, func() bool {
		var status int
		status, body = health(base)
		return status == http.StatusServiceUnavailable
	}, 10*time.Second, 5*time.Millisecond)
	assert.Contains(t, body, "waiting for 1 of 1 workers to connect")
	resp, err := http.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "no answers before the group is whole")

	wctx, stopWorker := context.WithCancel(context.Background())
	workerDone := make(chan error, 1)
	workerArgs := []string{"--port", strconv.Itoa(workerPort), "--model", "demo", "--tensor-parallel-size", "2",
		"--group-size", "2", "--rank", "1", "--leader-address", "localhost:" + strconv.Itoa(groupPort)}
	go func() { workerDone <- Main(wctx, workerArgs, &bytes.Buffer{}) }()
	require.Eventually(t, func() bool {
		resp, err := http.Get(base + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 5*time.Millisecond)
	resp, err = http.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, err = http.Get("http://127.0.0.1:" + strconv.Itoa(workerPort) + "/health")
	require.Error(t, err, "a worker serves no API")

	stopWorker()
	require.NoError(t, <-workerDone)
	select {
	case err := <-leaderDone:
		exit, ok := errors.AsType[*ExitError](err)
		require.True(t, ok, "%v", err)
		require.Equal(t, GroupExitCode, exit.Code)
		require.Contains(t, exit.Error(), "worker rank 1 left the serving group")
	case <-time.After(10 * time.Second):
		t.Fatal("the leader outlived its worker")
	}
}

func TestGroupFlags(t *testing.T) {
	c, err := parseFlags(t, "--group-size", "2", "--rank", "1", "--leader-address", "127.0.0.1:29550",
		"--tensor-parallel-size", "2", "-pp", "2", "--data_parallel_size", "2", "--enable-expert-parallel",
		"--tp-comm-base", "1ms", "--tp-comm-per-token", "3us", "--pp-stage-latency", "2ms", "--profile", "h100-8b")
	require.NoError(t, err)
	require.NoError(t, c.Validate())
	assert.Equal(t, GroupConfig{Size: 2, Rank: 1, LeaderAddress: "127.0.0.1:29550"}, c.Group)
	assert.Equal(t, Parallel{Tensor: 2, Pipeline: 2, Data: 2, Expert: true}, c.Parallel)
	assert.Equal(t, time.Millisecond, c.Physics.TPCommBase, "explicit physics flags win over --profile")
	assert.Equal(t, 3*time.Microsecond, c.Physics.TPCommPerToken)
	assert.Equal(t, 2*time.Millisecond, c.Physics.PPStageLatency)

	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{name: "rank out of range", args: []string{"--group-size", "2", "--tp", "2", "--rank", "2", "--leader-address", "127.0.0.1:1"}, err: "--rank 2"},
		{name: "negative rank", args: []string{"--group-size", "2", "--tp", "2", "--rank", "-1", "--leader-address", "127.0.0.1:1"}, err: "--rank -1"},
		{name: "no leader address", args: []string{"--group-size", "2", "--tp", "2"}, err: "--leader-address"},
		{name: "a leader off loopback", args: []string{"--group-size", "2", "--tp", "2", "--leader-address", "10.0.0.1:29550"}, err: "loopback only"},
		{name: "a leader by name", args: []string{"--group-size", "2", "--tp", "2", "--leader-address", "leader.example:29550"}, err: "loopback only"},
		{name: "remote: a flag for a host", args: []string{"--group-size", "2", "--tp", "2", "--group-remote", "--leader-address", "-x:29550"}, err: "host name"},
		{name: "remote: an empty host", args: []string{"--group-size", "2", "--tp", "2", "--group-remote", "--leader-address", ":29550"}, err: "host name"},
		{name: "remote: a bad label", args: []string{"--group-size", "2", "--tp", "2", "--group-remote", "--leader-address", "a..b:29550"}, err: "host name"},
		{name: "remote: a shell word", args: []string{"--group-size", "2", "--tp", "2", "--group-remote", "--leader-address", "$(x):29550"}, err: "host name"},
		{name: "port 0", args: []string{"--group-size", "2", "--tp", "2", "--leader-address", "127.0.0.1:0"}, err: "1..65535"},
		{name: "no port", args: []string{"--group-size", "2", "--tp", "2", "--leader-address", "127.0.0.1"}, err: "HOST:PORT"},
		{name: "size not dividing", args: []string{"--group-size", "2", "--leader-address", "127.0.0.1:1"}, err: "must divide tensor × pipeline × data (1)"},
		{name: "a leader address alone", args: []string{"--leader-address", "127.0.0.1:1"}, err: "needs --group-size above 1"},
		{name: "group size 0", args: []string{"--group-size", "0"}, err: "--group-size 0"},
		{name: "group size too big", args: []string{"--group-size", "2048"}, err: "--group-size 2048"},
		{name: "tensor 0", args: []string{"--tp", "0"}, err: "--tensor-parallel-size 0"},
		{name: "product too big", args: []string{"--tp", "64", "--pp", "64"}, err: "more than 1024"},
		{name: "expert alone", args: []string{"--enable-expert-parallel"}, err: "--enable-expert-parallel"},
		{name: "KV of all ranks too big", args: []string{"--dp", "1000"}, err: "--kv-blocks × data-parallel ranks"},
		{name: "negative TP cost", args: []string{"--tp-comm-base", "-1ms"}, err: "--tp-comm-base"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(t, tc.args...)
			require.NoError(t, err)
			require.ErrorContains(t, c.Validate(), tc.err)
		})
	}
}

// A group over pods (--group-remote): a leader named by any host name or IP
// address is accepted, workers dial it, and the leader listens on every
// interface at its port; without the flag, loopback only.
func TestRemoteGroup(t *testing.T) {
	for _, tc := range []struct{ addr, dial, listen string }{
		{"leader-0.demo-group.default:29550", "leader-0.demo-group.default:29550", ":29550"},
		{"10.244.0.7:29550", "10.244.0.7:29550", ":29550"},
		{"[fd00::7]:29550", "[fd00::7]:29550", ":29550"},
	} {
		dial, listen, err := groupAddress(tc.addr, true)
		require.NoError(t, err, tc.addr)
		assert.Equal(t, tc.dial, dial)
		assert.Equal(t, tc.listen, listen)
		_, _, err = groupAddress(tc.addr, false)
		require.ErrorContains(t, err, "loopback only", tc.addr)
	}
	c, err := parseFlags(t, "--group-size", "2", "--tp", "2", "--rank", "1", "--group-remote", "--leader-address", "leader-0.demo:29550")
	require.NoError(t, err)
	require.NoError(t, c.Validate())
	assert.Equal(t, GroupConfig{Size: 2, Rank: 1, LeaderAddress: "leader-0.demo:29550", Remote: true}, c.Group)
	// (Not started here: a leader listening on every interface would be
	// reachable from off this machine; the tests keep to loopback.)
}
