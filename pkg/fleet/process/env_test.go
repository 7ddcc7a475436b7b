package process

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// Replicas inherit kvasir local's environment but not the variables that
// stand for secrets and config maps: an engine gets only those its own
// template names (through Spec.Env).
func TestInheritedEnvLeavesSecretsOut(t *testing.T) {
	t.Setenv("KVASIR_SECRET_HF_TOKEN_TOKEN", "hf_x")
	t.Setenv("KVASIR_CONFIGMAP_CFG_LEVEL", "debug")
	t.Setenv("KVASIR_TEST_KEPT", "1")
	env := inheritedEnv()
	require.Contains(t, env, "KVASIR_TEST_KEPT=1")
	require.NotContains(t, env, "KVASIR_SECRET_HF_TOKEN_TOKEN=hf_x")
	require.NotContains(t, env, "KVASIR_CONFIGMAP_CFG_LEVEL=debug")
}
