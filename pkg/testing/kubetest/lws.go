package kubetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

// lwsModule is the module whose API types Kvasir builds LeaderWorkerSets
// with, and whose source carries the CRD of that version.
const lwsModule = "sigs.k8s.io/lws"

// lwsCRD is the LeaderWorkerSet CRD's path inside the lws module.
const lwsCRD = "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"

// LWSCRD returns the path of the LeaderWorkerSet CRD of the lws version
// in go.mod, inside the module cache (`go list -m`, no network: the module
// is already there for the build). The test fails when it cannot be found.
func LWSCRD(t testing.TB) string {
	t.Helper()
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", lwsModule)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "GOPROXY=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("finding module %s (go list -m): %v", lwsModule, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		t.Fatalf("module %s is not in the module cache: run `go mod download %s`", lwsModule, lwsModule)
	}
	crd := filepath.Join(dir, filepath.FromSlash(lwsCRD))
	if _, err := os.Stat(crd); err != nil {
		t.Fatalf("the LeaderWorkerSet CRD: %v", err)
	}
	return crd
}

// StartWithLWS is Start with the LeaderWorkerSet CRD installed as well
// (LWSCRD). Only the CRD: no LWS controller runs, so the test plays it
// (writes a set's status).
func StartWithLWS(t testing.TB) *rest.Config {
	t.Helper()
	_, cfg := start(t, LWSCRD(t))
	return cfg
}
