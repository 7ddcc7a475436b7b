package kubetest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// assetsEnv is the variable envtest reads the binaries' directory from.
const assetsEnv = "KUBEBUILDER_ASSETS"

// Assets returns the directory holding kube-apiserver, etcd,
// kube-controller-manager and kubectl:
// $KUBEBUILDER_ASSETS, else the cache directory hack/envtest-assets.sh
// builds into. ok is false when neither holds them.
func Assets() (dir string, ok bool) {
	if dir := os.Getenv(assetsEnv); dir != "" {
		return dir, hasBinaries(dir)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", false
	}
	matches, _ := filepath.Glob(filepath.Join(cache, "kvasir", "envtest", "k8s-*"))
	for _, m := range matches {
		if hasBinaries(m) {
			return m, true
		}
	}
	return "", false
}

func hasBinaries(dir string) bool {
	for _, b := range []string{"kube-apiserver", "etcd", "kube-controller-manager", "kubectl"} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// Start runs an API server for the test, with the CRDs of config/
// installed, and stops it when the test ends. Without the binaries the
// test fails with the command that builds them (make test builds them
// first).
func Start(t testing.TB) *rest.Config {
	t.Helper()
	_, cfg := start(t)
	return cfg
}

// start runs the API server with config/'s CRDs and those of the files
// (or directories) in crds.
func start(t testing.TB, crds ...string) (*envtest.Environment, *rest.Config) {
	t.Helper()
	dir, ok := Assets()
	if !ok {
		t.Fatalf("no kube-apiserver, etcd, kube-controller-manager and kubectl for envtest: run `make envtest-assets` (or set %s)", assetsEnv)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config")},
		ErrorIfCRDPathMissing: true,
	}
	env.CRDInstallOptions.Paths = crds
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting the test API server: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the test API server: %v", err)
		}
	})
	return env, cfg
}
