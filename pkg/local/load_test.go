package local

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
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

// tenantDoc is issue 15's Tenant, with a fromEnv key and an sha256.
const tenantDoc = `apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys:
    - sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    - fromEnv: TEAM_A_KEY
  limits:
    - {tokensPerMinute: 100000, maxConcurrentRequests: 64}
`

const serviceDoc = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec: {template: {engine: {type: sim}}}
`

// A file holds ModelServices and Tenants: Load returns the former and
// LoadTenants the latter, defaulted.
func TestLoadAndLoadTenantsShareAFile(t *testing.T) {
	file := []byte(serviceDoc + "---\n" + tenantDoc + "---\n" +
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team-b, namespace: ns}\nspec: {apiKeys: [{fromEnv: B}], priority: sheddable, weight: 3, models: [demo@canary]}\n")
	svcs, err := Load("f.yaml", file)
	require.NoError(t, err)
	require.Len(t, svcs, 1)
	require.Equal(t, "demo", svcs[0].Name)

	tenants, err := LoadTenants("f.yaml", file)
	require.NoError(t, err)
	require.Len(t, tenants, 2)
	a, b := tenants[0], tenants[1]
	require.Equal(t, "team-a", a.Name)
	require.Equal(t, "default", a.Namespace)
	require.Equal(t, v1alpha1.PriorityStandard, a.Spec.Priority)
	require.EqualValues(t, 1, *a.Spec.Weight)
	require.Equal(t, []string{"*"}, a.Spec.Models)
	require.Equal(t, "*", a.Spec.Limits[0].Model)
	require.Equal(t, "ns", b.Namespace)
	require.Equal(t, v1alpha1.PrioritySheddable, b.Spec.Priority)
	require.EqualValues(t, 3, *b.Spec.Weight)
	require.Equal(t, []string{"demo@canary"}, b.Spec.Models)

	none, err := LoadTenants("f.yaml", []byte(serviceDoc))
	require.NoError(t, err, "no Tenant: kvasir local stays open")
	require.Empty(t, none)
	_, err = Load("f.yaml", []byte(tenantDoc))
	require.ErrorContains(t, err, "no serving.kvasir.dev/v1alpha1 ModelService documents")
}

// Tenant documents are refused with the document and the field, and no
// error holds what may be a key, whatever the document holds.
func TestLoadTenantsErrors(t *testing.T) {
	const key = "sk-live-very-secret-key"
	tenant := func(spec string) string {
		return "apiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: " + spec + "\n"
	}
	manyKeys := make([]string, v1alpha1.MaxTenantAPIKeys+1)
	for i := range manyKeys {
		manyKeys[i] = fmt.Sprintf("{fromEnv: K%d}", i)
	}
	bomb := "apiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
	for i, prev := 'b', 'a'; i <= 'j'; i, prev = i+1, i {
		bomb += fmt.Sprintf("%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n", i, i, prev, prev, prev, prev, prev, prev, prev, prev, prev, prev)
	}
	for name, tc := range map[string]struct{ file, want string }{
		"plain key field": {tenant(`{apiKeys: [{key: ` + key + `}]}`), `document 1: error unmarshaling JSON: while decoding JSON: json: unknown field "key"`},
		"key in sha256":   {tenant(`{apiKeys: [{sha256: ` + key + `}]}`), `document 1 (Tenant "t"): must be 64 lowercase hexadecimal characters: the SHA-256 of the key, never the key: spec.apiKeys[0].sha256`},
		"key in fromEnv":  {tenant(`{apiKeys: [{fromEnv: ` + key + `}]}`), `spec.apiKeys[0].fromEnv`},
		"two sources":     {tenant(`{apiKeys: [{fromEnv: A, sha256: "` + strings.Repeat("a", 64) + `"}]}`), "expected exactly one, got both: spec.apiKeys[0].fromEnv, spec.apiKeys[0].sha256"},
		"no keys":         {tenant(`{priority: critical}`), "spec.apiKeys"},
		"priority gold":   {tenant(`{apiKeys: [{fromEnv: A}], priority: gold}`), "spec.priority"},
		"weight 0":        {tenant(`{apiKeys: [{fromEnv: A}], weight: 0}`), "spec.weight"},
		"empty limit":     {tenant(`{apiKeys: [{fromEnv: A}], limits: [{model: llama}]}`), "a limit sets at least one bound: spec.limits[0].inputTokensPerMinute"},
		"two limits":      {tenant(`{apiKeys: [{fromEnv: A}], limits: [{requestsPerMinute: 1}, {model: "*", tokensPerMinute: 5}]}`), `model "*" already has a limit (limits[0]): spec.limits[1].model`},
		"duplicate name": {tenant(`{apiKeys: [{fromEnv: A}]}`) + "---\n" + serviceDoc + "---\n" + tenant(`{apiKeys: [{fromEnv: B}]}`),
			`document 3: Tenant "t" already defined in document 1`},
		"key of two tenants": {tenant(`{apiKeys: [{fromEnv: A}]}`) + "---\n" + strings.Replace(tenant(`{apiKeys: [{fromEnv: B}, {fromEnv: A}]}`), "name: t", "name: u", 1),
			`document 2 (Tenant "u"): spec.apiKeys[1]: the same key as a Tenant of document 1`},
		"duplicated field": {tenant(`{apiKeys: [{fromEnv: A}], weight: 2, weight: 3}`), `key "weight" already set in map`},
		"malformed":        {tenant(`{apiKeys: [{fromEnv: A}]`), "document 1: error converting YAML to JSON"},
		"wrong type":       {tenant(`{apiKeys: [` + key + `]}`), "document 1: error unmarshaling JSON"},
		"huge":             {tenant(`{apiKeys: [` + strings.Join(manyKeys, ", ") + `]}`), "expected 1 <= 65 <= 64: spec.apiKeys"},
		"alias bomb":       {bomb, "document 1: error converting YAML to JSON: yaml: document contains excessive aliasing"},
		"unknown kind":     {"apiVersion: serving.kvasir.dev/v1alpha1\nkind: Team\n", `document 1: kind "Team" is not supported here (want ModelService or Tenant)`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadTenants("f.yaml", []byte(tc.file))
			require.ErrorContains(t, err, "f.yaml: ")
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), key)
		})
	}
}

// Load, which kvasir local and kvasir bench call, skips Tenants, even ones
// it would refuse: LoadTenants reports them.
func TestLoadSkipsTenantDocuments(t *testing.T) {
	svcs, err := Load("f.yaml", []byte(tenantDoc+"---\n"+serviceDoc+"---\napiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nspec: {weight: 0}\n"))
	require.NoError(t, err)
	require.Len(t, svcs, 1)
}
