package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/testing/peerengine"
)

// EnvServer names the environment variable that holds the path of the
// redis-server binary (or wrapper) to run.
const EnvServer = "KVASIR_REDIS_SERVER"

// readyTimeout bounds how long Start waits for the first PONG.
const readyTimeout = 10 * time.Second

// binary is the one lookup of redis-server, shared by every test of the
// process.
var binary struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of a redis-server to run: $KVASIR_REDIS_SERVER,
// redis-server on PATH, or what hack/redis-assets.sh fetches. It fails the
// test, with how to get one, when none works.
func Binary(t testing.TB) string {
	t.Helper()
	binary.once.Do(func() { binary.path, binary.err = find() })
	if binary.err != nil {
		t.Fatalf("redistest: no redis-server: %v\n"+
			"Run `make redis-assets` (Debian or Ubuntu: it fetches Debian's package into ~/.cache/kvasir/redis), "+
			"or install redis-server (apt-get install redis-server, brew install redis) and put it on PATH, "+
			"or set %s to its path.", binary.err, EnvServer)
	}
	return binary.path
}

func find() (string, error) {
	if p := os.Getenv(EnvServer); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvServer, p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	root, err := peerengine.RepoRoot()
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(root, "hack", "redis-assets.sh"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = root, &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/redis-assets.sh: %w\n%s", err, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Server is one redis-server a test started.
type Server struct {
	// Addr is host:port, on 127.0.0.1; it stays the same across Restart.
	Addr string

	bin  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs *bytes.Buffer
}

// Start starts redis-server on 127.0.0.1 at a free port, without
// persistence, waits until it answers PING and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{bin: Binary(t)}
	port, err := freePort()
	if err != nil {
		t.Fatalf("redistest: free port: %v", err)
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.Cleanup(func() { s.stop() })
	if err := s.start(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return s
}

// Kill stops the server at once (SIGKILL), as a crash would, and returns
// when the process is gone, so the port refuses connections from then on.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.stop()
}

// Restart starts the server again on the same address, empty (nothing was
// persisted), after a Kill; it waits until it answers PING.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	if err := s.start(); err != nil {
		t.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) start() error {
	host, port, _ := net.SplitHostPort(s.Addr)
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin,
		"--bind", host, "--port", port,
		"--save", "", "--appendonly", "no",
		"--protected-mode", "yes",
		"--dir", dir,
		"--loglevel", "warning")
	logs := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done, s.logs = cmd, done, logs
	s.mu.Unlock()
	if err := waitPing(s.Addr, done); err != nil {
		s.stop()
		return fmt.Errorf("redis-server on %s: %w\n%s", s.Addr, err, logs.String())
	}
	return nil
}

func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// waitPing polls the address with PING until PONG, the process exits or
// readyTimeout passes.
func waitPing(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ping(addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG after %s: %w", readyTimeout, err)
		}
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		case <-tick.C:
		}
	}
}

// Ping sends PING to addr over plain RESP and reports whether PONG came
// back within a second.
func Ping(addr string) error { return ping(addr) }

func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
