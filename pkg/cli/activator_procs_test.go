package cli

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/maxprocs"
)

// The standalone activator runs on one P while idle (pkg/maxprocs, as the
// queue-proxy) and gives the runtime its default back when it returns.
func TestActivatorMainFitsGOMAXPROCS(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: one P is the default")
	}
	if maxprocs.Pinned() {
		t.Skip("GOMAXPROCS is set for the tests")
	}
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) }) // as go test -cpu set it
	ctx, cancel := context.WithCancel(t.Context())
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- ActivatorMain(ctx, []string{"--addr", "127.0.0.1:0", "--admin-addr", "", "--model", "m",
			"--backend", "127.0.0.1:1", "--log-level", "warn"}, &stderr)
	}()
	require.Eventually(t, func() bool { return runtime.GOMAXPROCS(0) == 1 }, 10*time.Second, time.Millisecond,
		"an idle activator keeps one P")
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("ActivatorMain did not return")
	}
	assert.Greater(t, runtime.GOMAXPROCS(0), 1, "the runtime's default is back once it returned")
}
