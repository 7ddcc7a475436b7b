package manifests

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// issueTenant is the Tenant of issue 15, with a real digest.
const issueTenant = `
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: team-a, namespace: default}
spec:
  apiKeys:
    - sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    - secretKeyRef: {name: team-a-keys, key: k1}
    - fromEnv: TEAM_A_KEY
  priority: standard
  weight: 1
  models: ["*"]
  limits:
    - model: "*"
      requestsPerMinute: 600
      tokensPerMinute: 100000
      inputTokensPerMinute: 80000
      outputTokensPerMinute: 20000
      maxConcurrentRequests: 64
`

// plainKey stands for a key written where it does not belong: no answer of
// the API server may show it.
const plainKey = "sk-live-0123456789-very-secret"

// tenantWith is the issue's Tenant with its spec changed by edit.
func tenantWith(t *testing.T, edit func(spec map[string]any)) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(issueTenant), &u.Object))
	edit(u.Object["spec"].(map[string]any))
	return u
}

// setKey replaces the spec's i-th API key.
func setKey(i int, key map[string]any) func(map[string]any) {
	return func(spec map[string]any) { spec["apiKeys"].([]any)[i] = key }
}

// The Tenant CRD of config/ takes issue 15's example and refuses, by its
// schema and CEL rules, what Tenant.Validate refuses, without echoing a key
// written in the wrong place.
func TestTenantCRDValidation(t *testing.T) {
	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()

	require.NoError(t, c.Create(ctx, tenantWith(t, func(map[string]any) {}), client.DryRunAll), "the issue's example")
	require.NoError(t, c.Create(ctx, tenantWith(t, func(spec map[string]any) {
		spec["apiKeys"] = []any{map[string]any{"fromEnv": "K"}}
		for _, f := range []string{"priority", "weight", "models", "limits"} {
			delete(spec, f)
		}
	}), client.DryRunAll), "only a key")

	for name, tc := range map[string]struct {
		edit func(map[string]any)
		want string
	}{
		"two sources": {setKey(0, map[string]any{"fromEnv": "K", "secretKeyRef": map[string]any{"name": "s", "key": "k"}}),
			"an API key sets exactly one of sha256, secretKeyRef and fromEnv"},
		"no source": {setKey(0, map[string]any{}), "an API key sets exactly one of sha256, secretKeyRef and fromEnv"},
		"sha256 upper case": {setKey(0, map[string]any{"sha256": strings.Repeat("AB", 32)}),
			"spec.apiKeys[0].sha256: Invalid value: sha256 must be 64 lowercase hexadecimal characters"},
		"a key in sha256": {setKey(0, map[string]any{"sha256": plainKey}), "sha256 must be 64 lowercase hexadecimal characters"},
		"a long key in sha256": {setKey(0, map[string]any{"sha256": strings.Repeat(plainKey, 3)}),
			"spec.apiKeys[0].sha256: Too long"},
		"a key in fromEnv": {setKey(2, map[string]any{"fromEnv": plainKey}), "fromEnv must be the name of an environment variable"},
		"secret name":      {setKey(1, map[string]any{"secretKeyRef": map[string]any{"name": "Keys", "key": "k"}}), "spec.apiKeys[1].secretKeyRef.name"},
		"no keys":          {func(spec map[string]any) { spec["apiKeys"] = []any{} }, "spec.apiKeys: Invalid value: 0: spec.apiKeys in body should have at least 1 items"},
		"weight 0":         {func(spec map[string]any) { spec["weight"] = 0 }, "spec.weight: Invalid value: 0: spec.weight in body should be greater than or equal to 1"},
		"priority gold": {func(spec map[string]any) { spec["priority"] = "gold" },
			`spec.priority: Unsupported value: "gold": supported values: "critical", "standard", "sheddable"`},
		"empty models": {func(spec map[string]any) { spec["models"] = []any{} }, "spec.models"},
		"bad tag":      {func(spec map[string]any) { spec["models"] = []any{"llama@Canary"} }, "spec.models[0]"},
		"limit with nothing set": {func(spec map[string]any) { spec["limits"] = []any{map[string]any{"model": "llama"}} },
			"a limit sets at least one of requestsPerMinute"},
		"limit of 0": {func(spec map[string]any) {
			spec["limits"] = []any{map[string]any{"tokensPerMinute": 0}}
		}, "spec.limits[0].tokensPerMinute"},
		"two limits for all models": {func(spec map[string]any) {
			spec["limits"] = append(spec["limits"].([]any), map[string]any{"requestsPerMinute": 1})
		}, `each model has at most one limit`},
	} {
		t.Run(name, func(t *testing.T) {
			err := c.Create(ctx, tenantWith(t, tc.edit), client.DryRunAll)
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), plainKey)
		})
	}

	t.Run("name", func(t *testing.T) {
		u := tenantWith(t, func(map[string]any) {})
		u.SetName("team.a")
		require.ErrorContains(t, c.Create(ctx, u, client.DryRunAll), "metadata.name must be a DNS-1035 label")
	})
}

// A plain key field is no part of the schema: by default the API server
// prunes it (the key is never stored), and under strict field validation,
// kubectl's default, it refuses the object, without echoing the key.
func TestTenantCRDHasNoPlainKeyField(t *testing.T) {
	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()
	withKey := func() *unstructured.Unstructured {
		return tenantWith(t, setKey(2, map[string]any{"fromEnv": "TEAM_A_KEY", "key": plainKey}))
	}

	err := c.Create(ctx, withKey(), client.DryRunAll, client.FieldValidation("Strict"))
	require.ErrorContains(t, err, `unknown field "spec.apiKeys[2].key"`)
	require.NotContains(t, err.Error(), plainKey)

	u := withKey()
	require.NoError(t, c.Create(ctx, u))
	got := &unstructured.Unstructured{}
	got.SetGroupVersionKind(u.GroupVersionKind())
	require.NoError(t, c.Get(ctx, client.ObjectKeyFromObject(u), got))
	stored, err := yaml.Marshal(got.Object)
	require.NoError(t, err)
	require.NotContains(t, string(stored), plainKey, "pruned, never stored")
	require.Contains(t, string(stored), "TEAM_A_KEY")
}
