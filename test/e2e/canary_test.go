package e2e

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
)

const canaryV1 = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--zero-latency]}
    scaling: {minScale: 1, maxScale: 1}
`

// The template changes (a new engine argument) and the traffic pins the
// first revision at 90% with the latest at 10% under tag canary.
const canaryV2 = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--zero-latency, --default-max-tokens=32]}
    scaling: {minScale: 1, maxScale: 1}
  traffic:
    - {revisionName: demo-00001, percent: 90}
    - {latestRevision: true, percent: 10, tag: canary}
`

// Promotion: everything to the latest revision.
const canaryV3 = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--zero-latency, --default-max-tokens=32]}
    scaling: {minScale: 1, maxScale: 1}
  traffic:
    - {latestRevision: true, percent: 100}
`

// served sends one chat request (with an optional tag header) and returns
// the revision that answered; the request must succeed.
func served(t *testing.T, p *platform, tag string) string {
	t.Helper()
	code, rev := try(t, p, tag)
	require.Equal(t, http.StatusOK, code)
	return rev
}

// try sends one chat request and returns the status and the revision.
func try(t *testing.T, p *platform, tag string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, p.URL+activator.PathChat,
		strings.NewReader(`{"model":"demo","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if tag != "" {
		req.Header.Set(activator.TagHeader, tag)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	return resp.StatusCode, resp.Header.Get(activator.RevisionHeader)
}

func revisions(p *platform) map[string]int {
	out := map[string]int{}
	for _, r := range p.replicasOrNil() {
		out[r.Revision] = r.Ready
	}
	return out
}

// A canary on a laptop: editing the file's template creates the next
// revision while the first keeps serving; traffic splits 90/10 with a
// tagged canary; promotion moves everything to the new revision and the
// old one stops.
func TestCanaryByEditingTheFile(t *testing.T) {
	p := startLocal(t, canaryV1)
	require.Eventually(t, func() bool { return revisions(p)["demo-00001"] == 1 }, 60*time.Second, 20*time.Millisecond)
	require.Equal(t, "demo-00001", served(t, p, ""))

	require.NoError(t, os.WriteFile(p.File, []byte(canaryV2), 0o644))
	require.Eventually(t, func() bool {
		code, rev := try(t, p, "canary") // 404 (no such tag) until the edit is applied
		return code == http.StatusOK && rev == "demo-00002"
	}, 60*time.Second, 50*time.Millisecond, "the canary tag reaches the new revision once it is ready")
	counts := map[string]int{}
	for range 400 {
		counts[served(t, p, "")]++
	}
	require.Equal(t, 400, counts["demo-00001"]+counts["demo-00002"], "%v", counts)
	require.InDelta(t, 40, counts["demo-00002"], 25, "about 10%% to the canary: %v", counts)

	require.NoError(t, os.WriteFile(p.File, []byte(canaryV3), 0o644))
	require.Eventually(t, func() bool {
		revs := revisions(p)
		_, old := revs["demo-00001"]
		return !old && revs["demo-00002"] == 1
	}, 60*time.Second, 50*time.Millisecond, "the first revision stops once nothing routes to it")
	for range 20 {
		require.Equal(t, "demo-00002", served(t, p, ""))
	}
}

// A file that does not load is reported and changes nothing.
func TestBrokenFileEditKeepsServing(t *testing.T) {
	p := startLocal(t, canaryV1)
	require.Eventually(t, func() bool { return revisions(p)["demo-00001"] == 1 }, 60*time.Second, 20*time.Millisecond)
	bad := strings.Replace(canaryV2, "revisionName: demo-00001", "revisionName: demo-00007", 1)
	require.NoError(t, os.WriteFile(p.File, []byte(bad), 0o644))
	require.Eventually(t, func() bool { return strings.Contains(p.logs.String(), "the changed file was not applied") },
		30*time.Second, 50*time.Millisecond)
	require.Contains(t, p.logs.String(), `unknown revision \"demo-00007\"`)
	require.Equal(t, "demo-00001", served(t, p, ""))
	require.Equal(t, map[string]int{"demo-00001": 1}, revisions(p))
}
