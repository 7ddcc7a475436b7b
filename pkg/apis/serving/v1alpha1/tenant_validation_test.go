package v1alpha1

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

// issueTenant is the Tenant of issue 15.
const issueTenant = `
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
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

func issueExample(t *testing.T) *Tenant {
	t.Helper()
	tn := &Tenant{}
	require.NoError(t, yaml.UnmarshalStrict([]byte(issueTenant), tn))
	tn.SetDefaults()
	return tn
}

func TestTenantDefaults(t *testing.T) {
	tn := &Tenant{Spec: TenantSpec{APIKeys: []APIKey{{FromEnv: "K"}}, Limits: []TenantLimit{{RequestsPerMinute: ptr(int64(1))}}}}
	tn.SetDefaults()
	assert.Equal(t, PriorityStandard, tn.Spec.Priority)
	assert.Equal(t, int32(1), *tn.Spec.Weight)
	assert.Equal(t, []string{AllModels}, tn.Spec.Models)
	assert.Equal(t, AllModels, tn.Spec.Limits[0].Model)
	again := tn.DeepCopy()
	again.SetDefaults()
	assert.Equal(t, tn, again, "idempotent")

	set := &Tenant{Spec: TenantSpec{Priority: PriorityCritical, Weight: ptr(int32(4)), Models: []string{"llama@canary"},
		Limits: []TenantLimit{{Model: "llama", TokensPerMinute: ptr(int64(10))}}}}
	set.SetDefaults()
	assert.Equal(t, PriorityCritical, set.Spec.Priority)
	assert.Equal(t, int32(4), *set.Spec.Weight)
	assert.Equal(t, []string{"llama@canary"}, set.Spec.Models)
	assert.Equal(t, "llama", set.Spec.Limits[0].Model)

	empty := &Tenant{Spec: TenantSpec{Models: []string{}}}
	empty.SetDefaults()
	assert.Empty(t, empty.Spec.Models, "an explicit empty list is not all models")
}

func TestTenantValidate(t *testing.T) {
	const plainKey = "sk-live-very-secret-key"
	tests := []struct {
		name   string
		mutate func(*Tenant)
		paths  []string // nil = valid
		msg    string
	}{
		{name: "issue example", mutate: func(*Tenant) {}},
		{name: "one key, nothing else", mutate: func(tn *Tenant) {
			tn.Spec = TenantSpec{APIKeys: []APIKey{{FromEnv: "_K1"}}}
			tn.SetDefaults()
		}},
		{name: "tagged model and per-model limits", mutate: func(tn *Tenant) {
			tn.Spec.Models = []string{"llama@canary", "llama", "mistral-7b"}
			tn.Spec.Limits = append(tn.Spec.Limits, TenantLimit{Model: "llama@canary", MaxConcurrentRequests: ptr(int64(1))})
		}},
		{name: "no name", mutate: func(tn *Tenant) { tn.Name = "" }, paths: []string{"metadata.name"}},
		{name: "name not a DNS label", mutate: func(tn *Tenant) { tn.Name = "Team_A" }, paths: []string{"metadata.name"}},
		{name: "name too long", mutate: func(tn *Tenant) { tn.Name = strings.Repeat("a", 64) },
			paths: []string{"metadata.name"}, msg: "no more than 63"},
		{name: "no keys", mutate: func(tn *Tenant) { tn.Spec.APIKeys = nil },
			paths: []string{"spec.apiKeys"}, msg: "at least one API key"},
		{name: "too many keys", mutate: func(tn *Tenant) {
			tn.Spec.APIKeys = nil
			for i := range MaxTenantAPIKeys + 1 {
				tn.Spec.APIKeys = append(tn.Spec.APIKeys, APIKey{FromEnv: "K" + strings.Repeat("X", i)})
			}
		}, paths: []string{"spec.apiKeys"}},
		{name: "key with no source", mutate: func(tn *Tenant) { tn.Spec.APIKeys[1] = APIKey{} },
			paths: []string{"spec.apiKeys[1].sha256", "spec.apiKeys[1].secretKeyRef", "spec.apiKeys[1].fromEnv"}, msg: "expected exactly one"},
		{name: "key with two sources", mutate: func(tn *Tenant) { tn.Spec.APIKeys[2].SHA256 = tn.Spec.APIKeys[0].SHA256 },
			paths: []string{"spec.apiKeys[2].sha256", "spec.apiKeys[2].fromEnv"}, msg: "expected exactly one"},
		{name: "sha256 upper case", mutate: func(tn *Tenant) { tn.Spec.APIKeys[0].SHA256 = strings.ToUpper(tn.Spec.APIKeys[0].SHA256) },
			paths: []string{"spec.apiKeys[0].sha256"}, msg: "64 lowercase hexadecimal"},
		{name: "sha256 short", mutate: func(tn *Tenant) { tn.Spec.APIKeys[0].SHA256 = "abc" },
			paths: []string{"spec.apiKeys[0].sha256"}},
		{name: "same key twice", mutate: func(tn *Tenant) {
			tn.Spec.APIKeys[2] = APIKey{SecretKeyRef: &SecretKeySelector{Name: "team-a-keys", Key: "k1"}}
		},
			paths: []string{"spec.apiKeys[2]"}, msg: "the same key as apiKeys[1]"},
		{name: "fromEnv not a variable name", mutate: func(tn *Tenant) { tn.Spec.APIKeys[2].FromEnv = "1KEY" },
			paths: []string{"spec.apiKeys[2].fromEnv"}},
		{name: "secret name", mutate: func(tn *Tenant) { tn.Spec.APIKeys[1].SecretKeyRef.Name = "Keys" },
			paths: []string{"spec.apiKeys[1].secretKeyRef.name"}},
		{name: "secret key missing", mutate: func(tn *Tenant) { tn.Spec.APIKeys[1].SecretKeyRef.Key = "" },
			paths: []string{"spec.apiKeys[1].secretKeyRef.key"}},
		{name: "secret key with a slash", mutate: func(tn *Tenant) { tn.Spec.APIKeys[1].SecretKeyRef.Key = "a/b" },
			paths: []string{"spec.apiKeys[1].secretKeyRef.key"}},
		{name: "priority gold", mutate: func(tn *Tenant) { tn.Spec.Priority = "gold" },
			paths: []string{"spec.priority"}, msg: "critical, standard, sheddable"},
		{name: "weight 0", mutate: func(tn *Tenant) { tn.Spec.Weight = ptr(int32(0)) },
			paths: []string{"spec.weight"}, msg: ">= 1"},
		{name: "no models", mutate: func(tn *Tenant) { tn.Spec.Models = []string{} },
			paths: []string{"spec.models"}, msg: "at least one model"},
		{name: "duplicate model", mutate: func(tn *Tenant) { tn.Spec.Models = []string{"a", "a"} },
			paths: []string{"spec.models[1]"}, msg: `duplicate model "a"`},
		{name: "bad tag", mutate: func(tn *Tenant) { tn.Spec.Models = []string{"llama@Canary", "@x", ""} },
			paths: []string{"spec.models[0]", "spec.models[1]", "spec.models[2]"}},
		{name: "limit with nothing set", mutate: func(tn *Tenant) { tn.Spec.Limits = []TenantLimit{{Model: "*"}} },
			paths: []string{"spec.limits[0].requestsPerMinute", "spec.limits[0].tokensPerMinute", "spec.limits[0].inputTokensPerMinute",
				"spec.limits[0].outputTokensPerMinute", "spec.limits[0].maxConcurrentRequests"}},
		{name: "limit of 0", mutate: func(tn *Tenant) { tn.Spec.Limits[0].TokensPerMinute = ptr(int64(0)) },
			paths: []string{"spec.limits[0].tokensPerMinute"}, msg: ">= 1"},
		{name: "two limits for one model", mutate: func(tn *Tenant) {
			tn.Spec.Limits = append(tn.Spec.Limits, TenantLimit{Model: "*", RequestsPerMinute: ptr(int64(1))})
		}, paths: []string{"spec.limits[1].model"}, msg: `model "*" already has a limit (limits[0])`},
		{name: "too many limits", mutate: func(tn *Tenant) {
			tn.Spec.Limits = nil
			for i := range MaxTenantLimits + 1 {
				tn.Spec.Limits = append(tn.Spec.Limits, TenantLimit{Model: "m" + strings.Repeat("x", i), RequestsPerMinute: ptr(int64(1))})
			}
		}, paths: []string{"spec.limits"}},
		{name: "a key in sha256 is not echoed", mutate: func(tn *Tenant) { tn.Spec.APIKeys[0].SHA256 = plainKey },
			paths: []string{"spec.apiKeys[0].sha256"}, msg: "never the key"},
		{name: "a key in fromEnv is not echoed", mutate: func(tn *Tenant) { tn.Spec.APIKeys[2].FromEnv = plainKey },
			paths: []string{"spec.apiKeys[2].fromEnv"}, msg: "never the key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tn := issueExample(t)
			tc.mutate(tn)
			err := tn.Validate()
			if tc.paths == nil {
				assert.Nil(t, err)
				return
			}
			require.NotNil(t, err)
			assert.ElementsMatch(t, tc.paths, errorPaths(err), "error: %v", err)
			assert.Contains(t, err.Error(), tc.msg)
			assert.NotContains(t, err.Error(), plainKey)
		})
	}
}

func TestTenantRefusesPlainKeyField(t *testing.T) {
	doc := strings.Replace(issueTenant, `- fromEnv: TEAM_A_KEY`, `- key: sk-live-very-secret-key`, 1)
	err := yaml.UnmarshalStrict([]byte(doc), &Tenant{})
	require.ErrorContains(t, err, `unknown field "key"`)
	assert.NotContains(t, err.Error(), "sk-live")
}

func TestValidSHA256(t *testing.T) {
	assert.True(t, ValidSHA256(strings.Repeat("0a", 32)))
	for _, bad := range []string{"", strings.Repeat("0A", 32), strings.Repeat("a", 63), strings.Repeat("a", 65), strings.Repeat("g", 64)} {
		assert.False(t, ValidSHA256(bad), bad)
	}
}
