package tenant

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

const secret = "sk-live-very-secret-key"

func TestDigestIsSHA256(t *testing.T) {
	// printf %s test | sha256sum
	want := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	d := Digest("test")
	assert.Equal(t, want, hex.EncodeToString(d[:]))
	parsed, err := ParseSHA256(want)
	require.NoError(t, err)
	assert.Equal(t, d, parsed)
}

func TestParseSHA256Refuses(t *testing.T) {
	upper := strings.Repeat("AB", 32)
	for name, s := range map[string]string{
		"empty": "", "a key": secret, "upper case": upper, "63 chars": strings.Repeat("a", 63),
		"65 chars": strings.Repeat("a", 65), "not hex": strings.Repeat("z", 64),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseSHA256(s)
			require.ErrorIs(t, err, ErrMalformedSHA256)
			if s != "" {
				assert.NotContains(t, err.Error(), s)
			}
		})
	}
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

func tenantWith(keys ...v1alpha1.APIKey) *v1alpha1.Tenant {
	return &v1alpha1.Tenant{Spec: v1alpha1.TenantSpec{APIKeys: keys}}
}

func TestResolveKeys(t *testing.T) {
	sum := sha256.Sum256([]byte("other"))
	tn := tenantWith(
		v1alpha1.APIKey{FromEnv: "TEAM_A_KEY"},
		v1alpha1.APIKey{SHA256: hex.EncodeToString(sum[:])},
	)
	got, err := ResolveKeys(tn, env(map[string]string{"TEAM_A_KEY": secret}))
	require.NoError(t, err)
	assert.Equal(t, [][32]byte{Digest(secret), sum}, got, "in the order of spec.apiKeys")

	none, err := ResolveKeys(tenantWith(), env(nil))
	require.NoError(t, err)
	assert.Empty(t, none)
}

func TestResolveKeysErrorsNameTheFieldNeverTheKey(t *testing.T) {
	vars := env(map[string]string{"EMPTY": "", "SPACED": secret + "\n", "OK": secret})
	for name, tc := range map[string]struct {
		key  v1alpha1.APIKey
		want string
	}{
		"unset variable": {v1alpha1.APIKey{FromEnv: "TEAM_A_KEY"},
			"spec.apiKeys[1].fromEnv: environment variable TEAM_A_KEY is not set"},
		"empty variable": {v1alpha1.APIKey{FromEnv: "EMPTY"}, "spec.apiKeys[1].fromEnv: environment variable EMPTY is empty"},
		"white space":    {v1alpha1.APIKey{FromEnv: "SPACED"}, "spec.apiKeys[1].fromEnv: environment variable SPACED holds a key with leading or trailing white space"},
		"secret": {v1alpha1.APIKey{SecretKeyRef: &v1alpha1.SecretKeySelector{Name: "team-a-keys", Key: "k1"}},
			"spec.apiKeys[1].secretKeyRef: kvasir local has no Secrets: give the key with fromEnv"},
		"key in sha256": {v1alpha1.APIKey{SHA256: secret}, "spec.apiKeys[1].sha256: must be 64 lowercase hexadecimal"},
		"no source":     {v1alpha1.APIKey{}, "spec.apiKeys[1]: an API key sets exactly one of"},
		"two sources":   {v1alpha1.APIKey{SHA256: secret, FromEnv: "OK"}, "spec.apiKeys[1]: an API key sets exactly one of"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ResolveKeys(tenantWith(v1alpha1.APIKey{FromEnv: "OK"}, tc.key), vars)
			require.Error(t, err)
			assert.Nil(t, got)
			assert.True(t, strings.HasPrefix(err.Error(), tc.want), "got %q", err)
			assert.NotContains(t, err.Error(), secret)
			assert.NotContains(t, err.Error(), "spec.apiKeys[0]", "the good key is not reported")
		})
	}
}

func TestResolveKeysReportsEveryProblem(t *testing.T) {
	_, err := ResolveKeys(tenantWith(v1alpha1.APIKey{FromEnv: "A"}, v1alpha1.APIKey{FromEnv: "B"}), env(nil))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "spec.apiKeys[0].fromEnv: environment variable A is not set")
	assert.Contains(t, err.Error(), "spec.apiKeys[1].fromEnv: environment variable B is not set")
}
