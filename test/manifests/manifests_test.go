// Package manifests checks every YAML document of config/ and examples/
// against a real API server.
package manifests

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// notKubernetes are API groups of documents that only Kvasir's own tools
// read (the bench compare file).
var notKubernetes = map[string]bool{"bench.kvasir.dev/v1alpha1": true}

// Every document in config/ and examples/ is accepted by the API server
// (server-side apply, dry run), CRDs installed.
func TestManifestsApplyWithDryRun(t *testing.T) {
	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()
	// The namespace must exist for the dry run of what goes in it.
	require.NoError(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kvasir-serving"}}))

	root := kubetest.RepoRoot()
	var files []string
	for _, dir := range []string{"config", "examples", filepath.Join("examples", "bench"), filepath.Join("examples", "bench", "autoscale")} {
		matches, err := filepath.Glob(filepath.Join(root, dir, "*.yaml"))
		require.NoError(t, err)
		files = append(files, matches...)
	}
	require.NotEmpty(t, files)
	applied := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, doc := range separator.Split(string(data), -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			u := &unstructured.Unstructured{}
			require.NoError(t, yaml.Unmarshal([]byte(doc), &u.Object), "%s document %d", f, i+1)
			if len(u.Object) == 0 || notKubernetes[u.GetAPIVersion()] {
				continue
			}
			if u.GetNamespace() == "" && u.GetKind() == "ModelService" {
				u.SetNamespace("default")
			}
			err := c.Patch(ctx, u, client.Apply, client.DryRunAll, client.FieldOwner("manifests-test"), client.ForceOwnership)
			require.NoError(t, err, "%s document %d (%s %s)", filepath.Base(f), i+1, u.GetKind(), u.GetName())
			applied++
		}
	}
	t.Logf("%d documents from %d files accepted", applied, len(files))
}
