package sim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMainRejectsBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	err := Main(context.Background(), []string{"--max-num-seqs", "0"}, &stderr)
	assert.ErrorContains(t, err, "--max-num-seqs")
	err = Main(context.Background(), []string{"--no-such-flag"}, &stderr)
	assert.ErrorContains(t, err, "no-such-flag")
	err = Main(context.Background(), []string{"extra"}, &stderr)
	assert.ErrorContains(t, err, `unexpected argument "extra"`)
	assert.NoError(t, Main(context.Background(), []string{"-h"}, &stderr))
	assert.Contains(t, stderr.String(), "-prefill-tps")
}

// freePort returns a port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startMain runs Main on a free port and waits until it is healthy.
func startMain(t *testing.T, ctx context.Context, args ...string) (string, <-chan error) {
	t.Helper()
	port := freePort(t)
	result := make(chan error, 1)
	go func() {
		result <- Main(ctx, append([]string{"--port", strconv.Itoa(port)}, args...), &bytes.Buffer{})
	}()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	require.Eventually(t, func() bool {
		status, _ := health(base)
		return status == http.StatusOK
	}, 5*time.Second, 5*time.Millisecond)
	return base, result
}

// health asks base's /health: the status and the body, 0 when the server
// did not answer.
func health(base string) (int, string) {
	resp, err := http.Get(base + "/health")
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMainGracefulShutdownFinishesStreams(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, result := startMain(t, ctx, "--time-scale", "20")

	resp, err := http.Post(base+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"x","stream":true,"max_tokens":30}`)) // ~10ms real
	require.NoError(t, err)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	_, err = r.ReadString('\n') // the first token
	require.NoError(t, err)

	cancel()
	var last string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(line, "data: ") {
			last = line
		}
	}
	assert.Equal(t, "data: [DONE]\n", last, "the in-flight stream completes")
	assert.NoError(t, <-result)
}

func TestMainCrashExitError(t *testing.T) {
	base, result := startMain(t, context.Background(), "--exit-after-tokens", "3", "--time-scale", "100")
	resp, err := http.Post(base+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"x","stream":true,"max_tokens":100}`))
	require.NoError(t, err)
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	resp.Body.Close()
	assert.Error(t, err, "the stream is cut")
	assert.Equal(t, 3, strings.Count(buf.String(), "data: "))

	select {
	case err := <-result:
		var exit *ExitError
		require.True(t, errors.As(err, &exit), "%v", err)
		assert.Equal(t, 3, exit.Code)
	case <-time.After(5 * time.Second):
		t.Fatal("Main did not return after the crash")
	}
	_, err = http.Get(base + "/health")
	assert.Error(t, err, "the listener is closed")
}
