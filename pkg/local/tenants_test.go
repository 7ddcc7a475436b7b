package local

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/tenant"
)

// loadConfig resolves the Tenants' keys from the environment it is given,
// refuses an unresolvable key naming the field, and --require-auth refuses
// a file without Tenants; no error holds a key.
func TestLoadConfigTenants(t *testing.T) {
	const key = "sk-local-test-0123456789"
	write := func(doc string) string {
		p := filepath.Join(t.TempDir(), "f.yaml")
		require.NoError(t, os.WriteFile(p, []byte(doc), 0o600))
		return p
	}
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	}
	tenantFile := write(serviceDoc + "---\n" +
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nmetadata: {name: team-a}\nspec: {apiKeys: [{fromEnv: TEAM_A_KEY}], models: [demo]}\n")

	cfg, err := loadConfig(Options{File: tenantFile, LookupEnv: env(map[string]string{"TEAM_A_KEY": key})})
	require.NoError(t, err)
	require.Len(t, cfg.services, 1)
	require.Len(t, cfg.tenants, 1)
	require.Equal(t, "team-a", cfg.tenants[0].Name)
	require.Equal(t, [][32]byte{tenant.Digest(key)}, cfg.tenants[0].Keys)
	require.Equal(t, []string{"demo"}, cfg.tenants[0].Models)
	require.Equal(t, 1, cfg.keys)

	_, err = loadConfig(Options{File: tenantFile, LookupEnv: env(nil)})
	require.ErrorContains(t, err, `Tenant "team-a": spec.apiKeys[0].fromEnv: environment variable TEAM_A_KEY is not set`)

	open := write(serviceDoc)
	cfg, err = loadConfig(Options{File: open, LookupEnv: env(nil)})
	require.NoError(t, err, "no Tenant: open")
	require.Empty(t, cfg.tenants)
	_, err = loadConfig(Options{File: open, LookupEnv: env(nil), RequireAuth: true})
	require.ErrorContains(t, err, "--require-auth")

	shared := write(serviceDoc + "---\n" +
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\nspec: {apiKeys: [{fromEnv: A}]}\n---\n" +
		"apiVersion: serving.kvasir.dev/v1alpha1\nkind: Tenant\nmetadata: {name: b}\nspec: {apiKeys: [{fromEnv: B}]}\n")
	_, err = loadConfig(Options{File: shared, LookupEnv: env(map[string]string{"A": key, "B": key})})
	require.ErrorContains(t, err, "also a key of tenant", "one key in two variables is one key for two tenants")
	require.NotContains(t, err.Error(), key)
}
