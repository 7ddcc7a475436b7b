package local

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

// examples/vllm.yaml in local mode: vLLM gets its model, positional and
// first, even with template arguments, and the HF token comes from kvasir
// local's environment under the documented name.
func TestVLLMExampleRunsLocally(t *testing.T) {
	svcs, err := LoadFile(filepath.Join(kubetest.RepoRoot(), "examples", "vllm.yaml"))
	require.NoError(t, err)
	require.Len(t, svcs, 1)
	ms := svcs[0]

	_, _, err = engineCommand(ms, []string{"kvasir"}, "", nil, env(nil), nil)
	require.ErrorContains(t, err, "set KVASIR_SECRET_HF_TOKEN_TOKEN in kvasir local's environment")

	argv, vars, err := engineCommand(ms, []string{"kvasir"}, "", nil, env(map[string]string{"KVASIR_SECRET_HF_TOKEN_TOKEN": "hf_x"}), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"vllm", "serve", ms.Spec.Model}, argv[:3])
	require.Subset(t, argv, []string{"--host", "127.0.0.1", "--port", "$(PORT)", "--served-model-name"})
	require.Contains(t, vars, "HF_TOKEN=hf_x")
}

func TestLocalEnvName(t *testing.T) {
	optional := true
	for _, tc := range []struct {
		src      corev1.EnvVarSource
		name     string
		optional bool
	}{
		{corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "hf-token"}, Key: "token"}}, "KVASIR_SECRET_HF_TOKEN_TOKEN", false},
		{corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "engine.cfg"}, Key: "Log-Level"}}, "KVASIR_CONFIGMAP_ENGINE_CFG_LOG_LEVEL", false},
		{corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k", Optional: &optional}}, "KVASIR_SECRET_S_K", true},
	} {
		name, opt, err := LocalEnvName(&tc.src)
		require.NoError(t, err)
		require.Equal(t, tc.name, name)
		require.Equal(t, tc.optional, opt)
	}
	_, _, err := LocalEnvName(&corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}})
	require.ErrorContains(t, err, "only secretKeyRef and configMapKeyRef")

	// An optional reference that is not set leaves the variable out.
	ms := &v1alpha1.ModelService{}
	ms.Name, ms.Spec.Model = "m", "m"
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Env: []corev1.EnvVar{
		{Name: "A", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k", Optional: &optional}}},
		{Name: "B", Value: "b"}}}
	_, vars, err := engineCommand(ms, []string{"kvasir"}, "", nil, env(nil), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"B=b"}, vars)
}

// A disaggregated simulator replica gets its role; a custom engine
// without a command cannot run locally.
func TestEngineCommandRolesAndCustom(t *testing.T) {
	ms := &v1alpha1.ModelService{}
	ms.Name, ms.Spec.Model = "m", "m"
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}
	argv, _, err := engineCommand(ms, []string{"/bin/kvasir"}, "prefill", []string{"--x=1"}, env(nil), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"/bin/kvasir", "sim", "--x=1", "--host", "127.0.0.1", "--port", "$(PORT)", "--model", "m", "--role=prefill",
		"--kv-events-endpoint", "tcp://127.0.0.1:$(KV_EVENTS_PORT)"}, argv)

	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom}
	_, _, err = engineCommand(ms, nil, "", nil, env(nil), nil)
	require.ErrorContains(t, err, "spec.template.engine.command: required")
}

// Two references that would read the same variable are refused: each
// engine must get the value its template names.
func TestLocalEnvNameCollision(t *testing.T) {
	ref := func(name, key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}}
	}
	ms := &v1alpha1.ModelService{}
	ms.Name, ms.Spec.Model = "m", "m"
	ms.Spec.Template.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Env: []corev1.EnvVar{
		{Name: "A", ValueFrom: ref("hf-token", "token")},
		{Name: "B", ValueFrom: ref("hf", "token-token")}}}
	_, _, err := engineCommand(ms, []string{"kvasir"}, "", nil, env(map[string]string{"KVASIR_SECRET_HF_TOKEN_TOKEN": "x"}), nil)
	require.ErrorContains(t, err, "secret hf-token key token and secret hf key token-token both read KVASIR_SECRET_HF_TOKEN_TOKEN")

	// The same reference twice is fine.
	ms.Spec.Template.Engine.Env[1].ValueFrom = ref("hf-token", "token")
	_, vars, err := engineCommand(ms, []string{"kvasir"}, "", nil, env(map[string]string{"KVASIR_SECRET_HF_TOKEN_TOKEN": "x"}), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"A=x", "B=x"}, vars)
}
