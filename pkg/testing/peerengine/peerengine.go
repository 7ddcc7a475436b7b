package peerengine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// build is the one build of a test binary: the binary is shared by every
// test of the process.
var build struct {
	once      sync.Once
	bin, skip string
	err       error
}

// Binary returns the path of the peer engine's binary, building it on first
// use with hack/peer-assets.sh (minutes the first time on a fresh machine,
// nothing after; `make test` builds it before the tests run). It skips the
// test only when there is no go to build it with.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		if _, err := exec.LookPath("go"); err != nil {
			build.skip = "go is not in PATH, so hack/peer-assets.sh cannot build the peer engine: " + err.Error()
			return
		}
		root, err := RepoRoot()
		if err != nil {
			build.err = err
			return
		}
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("bash", filepath.Join(root, "hack", "peer-assets.sh"))
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, &stdout, &stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			build.err = fmt.Errorf("hack/peer-assets.sh: %w\n%s", err, stderr.String())
			return
		}
		if d := time.Since(start); d > 5*time.Second {
			fmt.Fprintf(os.Stderr, "peerengine: built the peer engine in %s\n", d.Round(time.Second))
		}
		build.bin = strings.TrimSpace(stdout.String())
	})
	if build.skip != "" {
		t.Skip(build.skip)
	}
	if build.err != nil {
		t.Fatal(build.err)
	}
	if _, err := os.Stat(build.bin); err != nil {
		t.Fatalf("peer engine binary: %v", err)
	}
	return build.bin
}

// RepoRoot walks up from the working directory to the main module's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}
