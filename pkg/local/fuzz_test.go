package local

import (
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// errorNamesDocument is the shape of every Load error but the one for a
// file without ModelServices: the source, then the document.
var errorNamesDocument = regexp.MustCompile(`^fuzz\.yaml: (document \d+|no serving\.kvasir\.dev/v1alpha1 ModelService documents$)`)

// FuzzLoad checks the ModelService file loader on any text: no panic;
// errors name the file and the document; and what it accepts is what the
// rest of kvasir local can run: valid again, defaults already applied,
// names and models unique, traffic that splits. `go test` runs the seeds
// (the examples, f.Add and testdata/fuzz/FuzzLoad/); `make fuzz` explores.
func FuzzLoad(f *testing.F) {
	examples, _ := filepath.Glob(filepath.Join("..", "..", "examples", "*.yaml"))
	for _, p := range examples {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(string(data))
		}
	}
	for _, s := range []string{
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: ModelService\nmetadata: {name: a}\nspec: {template: {engine: {type: sim}}}\n",
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: ModelService\nmetadata: {name: a}\n" +
			"spec:\n  model: m\n  loraAdapters: [x]\n  template: {engine: {type: sim}, scaling: {minScale: 1, maxScale: 2}}\n" +
			"  traffic: [{latestRevision: true, percent: 100, tag: t}]\n  routing: {plugins: [{name: least-request}]}\n",
		"apiVersion: v1\nkind: ConfigMap\n---\napiVersion: serving.kvasir.dev/v1alpha1\nkind: Other\n",
		"---\n---\n", "a: [", "apiVersion: serving.kvasir.dev/v1alpha1\nkind: ModelService\nspec: 3\n", "\t", "- - -",
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: ModelService\nmetadata: {name: a}\nspec: {template: {engine: {type: sim}}}\n" +
			"---   \napiVersion: serving.kvasir.dev/v1alpha1\nkind: ModelService\nmetadata: {name: a, namespace: b}\nspec: {model: n, template: {engine: {type: sim}}}\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		svcs, err := Load("fuzz.yaml", []byte(text))
		if err != nil {
			require.Regexp(t, errorNamesDocument, err.Error())
			return
		}
		require.NotEmpty(t, svcs)
		names, models := map[string]bool{}, map[string]bool{}
		for _, ms := range svcs {
			require.NotEmpty(t, ms.Namespace)
			require.False(t, names[ms.Namespace+"/"+ms.Name], "service %s twice", ms.Name)
			require.False(t, models[ms.Spec.Model], "model %s twice", ms.Spec.Model)
			names[ms.Namespace+"/"+ms.Name], models[ms.Spec.Model] = true, true
			require.Nil(t, ms.Validate())
			again := ms.DeepCopy()
			again.SetDefaults()
			require.True(t, equality.Semantic.DeepEqual(ms, again), "defaults are not a fixed point")
			targets, err := traffic.Resolve(ms.Spec.Traffic, v1alpha1.RevisionName(ms.Name, 1), func(string) bool { return true })
			require.NoError(t, err)
			_, err = traffic.New(targets)
			require.NoError(t, err, "%+v", ms.Spec.Traffic)
			templateKey(ms)
			warnKubernetesOnly(slog.New(slog.DiscardHandler), ms)
		}
	})
}
