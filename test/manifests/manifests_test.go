// Package manifests checks every YAML document of config/ and examples/
// against a real API server.
package manifests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
	"github.com/kvasir-serving/kvasir/pkg/testing/netpol"
)

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// notKubernetes are API groups of documents that only Kvasir's own tools
// read (the bench compare file).
var notKubernetes = map[string]bool{"bench.kvasir.dev/v1alpha1": true}

// localOnly are example files whose ModelServices use what only kvasir
// local can do, and the API server's reason to refuse them there.
var localOnly = map[string]string{
	// a tokenizer.json read from the machine's filesystem
	"precise-prefix-pressure.yaml": "tokenizer.type file",
}

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
	for _, dir := range []string{"config", "examples", filepath.Join("examples", "bench"), filepath.Join("examples", "bench", "autoscale"), filepath.Join("examples", "bench", "groups")} {
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
			if u.GetNamespace() == "" && (u.GetKind() == "ModelService" || u.GetKind() == "Tenant") {
				u.SetNamespace("default")
			}
			err := c.Patch(ctx, u, client.Apply, client.DryRunAll, client.FieldOwner("manifests-test"), client.ForceOwnership)
			if reason, ok := localOnly[filepath.Base(f)]; ok && u.GetKind() == "ModelService" {
				require.ErrorContains(t, err, reason, "%s document %d: refused on Kubernetes", filepath.Base(f), i+1)
				continue
			}
			require.NoError(t, err, "%s document %d (%s %s)", filepath.Base(f), i+1, u.GetKind(), u.GetName())
			applied++
		}
	}
	t.Logf("%d documents from %d files accepted", applied, len(files))
}

// configObjects decodes the documents of config/ of one kind as T.
func configObjects[T any](t *testing.T, kind string) []T {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(kubetest.RepoRoot(), "config", "*.yaml"))
	require.NoError(t, err)
	var out []T
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, doc := range separator.Split(string(data), -1) {
			var meta metav1.TypeMeta
			require.NoError(t, yaml.Unmarshal([]byte(doc), &meta), f)
			if meta.Kind != kind {
				continue
			}
			var obj T
			require.NoError(t, yaml.UnmarshalStrict([]byte(doc), &obj), f)
			out = append(out, obj)
		}
	}
	return out
}

// Under the NetworkPolicies of config/ (and the ones the controller gives
// revisions), only activators reach the autoscaler's report port and the
// revision pods' queue-proxies; the controller's metrics and probes stay
// open. The pods are those of config/'s Deployments, with their labels.
func TestNetworkPoliciesLetOnlyActivatorsIn(t *testing.T) {
	policies := configObjects[networkingv1.NetworkPolicy](t, "NetworkPolicy")
	require.NotEmpty(t, policies)
	pods := map[string]netpol.Pod{}
	for _, d := range configObjects[appsv1.Deployment](t, "Deployment") {
		pods[d.Name] = netpol.Pod{Namespace: d.Namespace, Labels: d.Spec.Template.Labels}
	}
	activator, controller := pods["activator"], pods["controller"]
	require.NotEmpty(t, activator.Labels)
	require.NotEmpty(t, controller.Labels)
	stranger := netpol.Pod{Namespace: "default", Labels: map[string]string{"app": "web"}}
	lookalike := netpol.Pod{Namespace: "default", Labels: activator.Labels}
	neighbour := netpol.Pod{Namespace: "kvasir-serving", Labels: map[string]string{"app": "debug"}}

	require.True(t, netpol.Allows(policies, controller, activator, 8080), "activators report demand")
	for name, from := range map[string]netpol.Pod{"stranger": stranger, "look-alike": lookalike, "neighbour": neighbour} {
		require.False(t, netpol.Allows(policies, controller, from, 8080), "%s reaches the autoscaler", name)
		require.True(t, netpol.Allows(policies, controller, from, 9090), "%s scrapes metrics", name)
		require.True(t, netpol.Allows(policies, controller, from, 8081), "%s probes", name)
	}
	require.True(t, netpol.Allows(policies, activator, stranger, 8080), "the API is the activators' public port")

	// A revision's pods, under the policy the controller gives it.
	rev := &v1alpha1.ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "demo-00001", Namespace: "default",
		Labels: map[string]string{v1alpha1.LabelService: "demo"}}}
	rev.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
	revPolicies := append(policies, *resources.MakeNetworkPolicy(rev, resources.Config{}))
	pod := netpol.Pod{Namespace: "default", Labels: resources.Labels(rev, fleet.RoleUnified)}
	require.True(t, netpol.Allows(revPolicies, pod, activator, names.QueueProxyPort), "requests and stats streams")
	require.True(t, netpol.Allows(revPolicies, pod, controller, names.QueueProxyPort), "the autoscaler's stats streams")
	for name, from := range map[string]netpol.Pod{"stranger": stranger, "look-alike": lookalike, "neighbour": neighbour} {
		require.False(t, netpol.Allows(revPolicies, pod, from, names.QueueProxyPort), "%s reaches a queue-proxy", name)
	}
	require.False(t, netpol.Allows(revPolicies, pod, activator, 8000), "the engine is behind its queue-proxy")
}

// ko resolves only YAML strings that are wholly a ko:// reference: one
// inside a larger string (a flag=value argument, a command line in one
// string) reaches the cluster unresolved and every pod using it fails with
// InvalidImageName. Every ko:// in config/ and examples/ stands alone and
// names a main package of this repository.
func TestKoReferencesStandAlone(t *testing.T) {
	root := kubetest.RepoRoot()
	const module = "github.com/kvasir-serving/kvasir/"
	var files []string
	for _, dir := range []string{"config", "examples"} {
		matches, err := filepath.Glob(filepath.Join(root, dir, "*.yaml"))
		require.NoError(t, err)
		files = append(files, matches...)
	}
	refs := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, doc := range separator.Split(string(data), -1) {
			var obj any
			require.NoError(t, yaml.Unmarshal([]byte(doc), &obj), "%s document %d", f, i+1)
			for _, s := range yamlStrings(obj) {
				if !strings.Contains(s, "ko://") {
					continue
				}
				where := fmt.Sprintf("%s document %d: %q", filepath.Base(f), i+1, s)
				require.True(t, strings.HasPrefix(s, "ko://"+module), "%s: ko resolves only a string that is wholly ko://%s...", where, module)
				pkg := strings.TrimPrefix(s, "ko://"+module)
				require.Regexp(t, `^[a-z0-9/_-]+$`, pkg, where)
				main, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(pkg), "main.go"))
				require.NoError(t, err, "%s: no main package there", where)
				require.Contains(t, string(main), "package main", where)
				refs++
			}
		}
	}
	require.GreaterOrEqual(t, refs, 4, "config/ builds the controller, activator, queue-proxy and simulator images")
}

// yamlStrings returns every string, key or value, in a decoded document.
func yamlStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, yamlStrings(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for k, e := range v {
			out = append(out, k)
			out = append(out, yamlStrings(e)...)
		}
		return out
	}
	return nil
}

// ko reads its configuration only from a file named .ko.yaml (viper, config
// name ".ko"): a ko.yaml beside it is silently ignored, with its base image,
// platforms and link flags. Every build it names is a main package here.
func TestKoConfigIsRead(t *testing.T) {
	root := kubetest.RepoRoot()
	_, err := os.Stat(filepath.Join(root, "ko.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist, "ko ignores ko.yaml: name it .ko.yaml")
	data, err := os.ReadFile(filepath.Join(root, ".ko.yaml"))
	require.NoError(t, err)
	var cfg struct {
		DefaultBaseImage string   `json:"defaultBaseImage"`
		DefaultPlatforms []string `json:"defaultPlatforms"`
		Builds           []struct {
			ID      string   `json:"id"`
			Main    string   `json:"main"`
			Env     []string `json:"env"`
			Ldflags []string `json:"ldflags"`
		} `json:"builds"`
	}
	require.NoError(t, yaml.UnmarshalStrict(data, &cfg))
	require.NotEmpty(t, cfg.DefaultBaseImage)
	require.Contains(t, cfg.DefaultPlatforms, "linux/amd64")
	require.NotEmpty(t, cfg.Builds)
	for _, b := range cfg.Builds {
		main, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(b.Main), "main.go"))
		require.NoError(t, err, "build %s", b.ID)
		require.Contains(t, string(main), "package main", "build %s", b.ID)
	}
}
