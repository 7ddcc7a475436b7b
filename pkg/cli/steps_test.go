package cli

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/bench"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/autoscaling"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// requireUsage asserts err is a UsageError (exit code 2) saying want.
func requireUsage(t *testing.T, err error, want string) {
	t.Helper()
	var u UsageError
	require.True(t, errors.As(err, &u), "a usage error: %v", err)
	require.Equal(t, want, u.Error())
}

func TestParseActivatorFlagsModes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // the usage error; "" = none
	}{
		{"static", []string{"--model", "m", "--backend", "127.0.0.1:9000"}, ""},
		{"kubernetes", []string{"--kubernetes"}, ""},
		{"kubernetes with a model", []string{"--kubernetes", "--model", "m"}, "--kubernetes: --backend, --model and --routing come from the cluster"},
		{"kubernetes with routing", []string{"--kubernetes", "--routing", "least-request"}, "--kubernetes: --backend, --model and --routing come from the cluster"},
		{"no model", []string{"--backend", "127.0.0.1:9000"}, "--model: required"},
		{"no backend", []string{"--model", "m"}, "--backend: at least one is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseActivatorFlags(tc.args, io.Discard)
			if tc.want != "" {
				requireUsage(t, err, tc.want)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "127.0.0.1:8080", f.addr)
		})
	}
}

func TestStaticServiceAndEndpoints(t *testing.T) {
	routing := []v1alpha1.RoutingPlugin{{Name: "least-request", Weight: 2}}
	svc := staticService("m", 4, routing)
	require.Equal(t, "m", svc.Model)
	require.Equal(t, routing, svc.Routing)
	require.Equal(t, []traffic.Target{{Revision: "m-static", Percent: 100}}, svc.Traffic)
	require.Len(t, svc.Revisions, 1)
	require.Equal(t, "m-static", svc.Revisions[0].Name)
	require.Equal(t, 4, svc.Revisions[0].ContainerConcurrency)

	eps, err := staticEndpoints([]string{"127.0.0.1:9000", "host:9001"})
	require.NoError(t, err)
	require.Equal(t, []fleet.Endpoint{{Name: "backend-0", Address: "127.0.0.1:9000"}, {Name: "backend-1", Address: "host:9001"}}, eps)
	_, err = staticEndpoints([]string{"127.0.0.1:9000", "no-port"})
	require.ErrorAs(t, err, new(UsageError))
	require.ErrorContains(t, err, `--backend "no-port"`)
}

func TestParseControllerFlags(t *testing.T) {
	_, err := parseControllerFlags(nil, io.Discard)
	requireUsage(t, err, "--queue-proxy-image, --simulator-image: required")
	_, err = parseControllerFlags([]string{"--queue-proxy-image", "qp"}, io.Discard)
	requireUsage(t, err, "--simulator-image: required")
	_, err = parseControllerFlags([]string{"--queue-proxy-image", "qp", "--simulator-image", "sim", "--keep-revisions", "-1"}, io.Discard)
	requireUsage(t, err, "--keep-revisions: must be >= 0")

	f, err := parseControllerFlags([]string{"--queue-proxy-image", "qp", "--simulator-image", "sim", "--leader-election-namespace", "sys"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "sys", f.res.SystemNamespace, "the system namespace is the leader election's")
	opts := f.managerOptions(nil)
	require.Equal(t, "sys", opts.LeaderElectionNamespace)
	require.Equal(t, "kvasir-controller", opts.LeaderElectionID)
	require.True(t, opts.LeaderElection)
}

func TestLeaderEndpoint(t *testing.T) {
	ep, err := leaderEndpoint(":8080", "sys", "autoscaler", "10.0.0.7")
	require.NoError(t, err)
	require.Equal(t, &autoscaling.LeaderEndpoint{Namespace: "sys", Service: "autoscaler", IP: "10.0.0.7", Port: 8080, PortName: "http"}, ep)
	_, err = leaderEndpoint("8080", "sys", "autoscaler", "10.0.0.7")
	require.ErrorAs(t, err, new(UsageError))
	_, err = leaderEndpoint(":http", "sys", "autoscaler", "10.0.0.7")
	require.ErrorContains(t, err, `--autoscaler-addr ":http": port:`)
}

func TestLoadShape(t *testing.T) {
	shape, limit := loadShape(bench.Config{})
	require.Equal(t, "closed loop", shape)
	require.Equal(t, "unlimited", limit)
	shape, limit = loadShape(bench.Config{Rate: 2.5, Arrival: bench.ArrivalPoisson, MaxConcurrency: 8})
	require.Equal(t, "2.5 req/s (poisson)", shape)
	require.Equal(t, "8", limit)
}

func TestParseCompareFlags(t *testing.T) {
	_, err := parseCompareFlags(nil, io.Discard)
	requireUsage(t, err, "-f: a file with ModelService documents and a Benchmark document is required")
	_, err = parseCompareFlags([]string{"-f", "x.yaml", "extra"}, io.Discard)
	requireUsage(t, err, "unexpected arguments: extra")
	_, err = parseCompareFlags([]string{"-f", "x.yaml", "--json", "/no/such/dir/out.json"}, io.Discard)
	requireUsage(t, err, "--json: /no/such/dir: no such directory")

	f, err := parseCompareFlags([]string{"-f", "x.yaml", "--only", "a,b", "--only", "c"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, nameList{"a", "b", "c"}, f.only)
	require.Equal(t, "error", f.logLevel())
	f.verbose = true
	require.Equal(t, "info", f.logLevel())
}

func TestCompareDir(t *testing.T) {
	dir, temp, err := compareDir("/some/dir")
	require.NoError(t, err)
	require.Equal(t, "/some/dir", dir)
	require.False(t, temp)

	t.Setenv("TMPDIR", t.TempDir())
	dir, temp, err = compareDir("")
	require.NoError(t, err)
	require.True(t, temp)
	require.Equal(t, os.Getenv("TMPDIR"), filepath.Dir(dir))
	st, err := os.Stat(dir)
	require.NoError(t, err)
	require.True(t, st.IsDir())
}
