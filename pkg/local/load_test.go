package local

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadQuickstart(t *testing.T) {
	svcs, err := LoadFile(filepath.Join("..", "..", "examples", "quickstart.yaml"))
	require.NoError(t, err)
	require.Len(t, svcs, 1)
	ms := svcs[0]
	require.Equal(t, "demo", ms.Spec.Model)
	require.Equal(t, "default", ms.Namespace)
	require.EqualValues(t, 0, *ms.Spec.Template.Scaling.InitialScale)
	require.EqualValues(t, 8000, ms.Spec.Template.Engine.Port)
}

func TestLoadErrorsNameTheField(t *testing.T) {
	for name, tc := range map[string]struct{ doc, want string }{
		"bad engine": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {template: {engine: {type: tpu}}}`, "spec.template.engine.type"},
		"min over max": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {template: {engine: {type: sim}, scaling: {minScale: 3, maxScale: 1}}}`, "spec.template.scaling.minScale"},
		"percents": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec:
  template: {engine: {type: sim}}
  traffic: [{latestRevision: true, percent: 50}]`, "spec.traffic.percent"},
		"unknown field": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {template: {engine: {type: sim}}, replicas: 3}`, "replicas"},
		"duplicate model": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {model: m, template: {engine: {type: sim}}}
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: b}
spec: {model: m, template: {engine: {type: sim}}}`, `spec.model "m"`},
		"adapter named like the model": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {model: m, loraAdapters: [sql, m], template: {engine: {type: sim}}}`, `spec.loraAdapters[1]`},
		"unknown plugin": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {template: {engine: {type: sim}}, routing: {plugins: [{name: least-request}, {name: magic}]}}`, `spec.routing.plugins[1].name: unknown plugin "magic"`},
		"plugin config": {`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: a}
spec: {template: {engine: {type: sim}}, routing: {plugins: [{name: kv-cache-aware, config: {balanceSlack: -1}}]}}`, `spec.routing.plugins[0].config: balanceSlack: must be >= 0`},
		"empty": {"# nothing\n", "no serving.kvasir.dev/v1alpha1 ModelService"},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f.yaml")
			require.NoError(t, os.WriteFile(p, []byte(tc.doc), 0o644))
			_, err := LoadFile(p)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// kvasir local reads a cpu target but cannot act on it, and says so,
// naming the field.
func TestKubernetesOnlyTargetsWarned(t *testing.T) {
	svcs, err := Load("test.yaml", []byte(`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim}
    roles:
      prefill: {scaling: {target: {memoryGiB: 40}}}
      decode: {}
    scaling: {target: {cpu: 2, concurrency: 8}}
`))
	require.NoError(t, err)
	var buf bytes.Buffer
	warnKubernetesOnly(slog.New(slog.NewTextHandler(&buf, nil)), svcs[0])
	require.Contains(t, buf.String(), "field=spec.template.scaling.target.cpu")
	require.Contains(t, buf.String(), "field=spec.template.roles.prefill.scaling.target.memoryGiB")
	require.Equal(t, 2, strings.Count(buf.String(), "level=WARN"))
}

func TestSplitDocuments(t *testing.T) {
	docs := SplitDocuments([]byte("a: 1\n---\n--- \t\nb: 2\n----\nc: 3\n  ---\n---"))
	require.Equal(t, []string{"a: 1\n", "\n", "\nb: 2\n----\nc: 3\n  ---\n", ""}, docs,
		"only whole lines of --- (trailing blanks allowed) separate; empty documents count")
}
