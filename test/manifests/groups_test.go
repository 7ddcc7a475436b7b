package manifests

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/testing/kubetest"
)

// groupService is issue 16's example: a prefill group of tensor 8, a
// decode group of data 16 with expert parallelism across 2 nodes, and a
// template of tensor 8 × pipeline 2 on 8-GPU nodes (2 pods).
const groupService = `
apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: deepseek, namespace: default}
spec:
  model: deepseek-ai/DeepSeek-R1
  template:
    engine: {type: vllm}
    resources: {limits: {nvidia.com/gpu: "8"}}
    parallelism: {tensor: 8, pipeline: 2}
    acceleratorsPerNode: 8
    accelerators:
      - {name: h100, resources: {limits: {nvidia.com/gpu: "8"}}, cost: 3}
      - {name: l40s, resources: {limits: {nvidia.com/gpu: "4"}}, cost: 1, acceleratorsPerNode: 4}
    roles:
      prefill: {parallelism: {tensor: 8}}
      decode: {parallelism: {data: 16, expert: true}}
`

// groupServiceWith is the example with its template changed by edit.
func groupServiceWith(t *testing.T, edit func(tmpl map[string]any)) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	require.NoError(t, yaml.Unmarshal([]byte(groupService), &u.Object))
	edit(u.Object["spec"].(map[string]any)["template"].(map[string]any))
	return u
}

// The ModelService and ModelRevision CRDs take the serving groups
// and refuse, by their schema and CEL rules, the template-level splits
// Validate refuses, naming the field.
func TestGroupCRDValidation(t *testing.T) {
	// The example is valid for Kvasir too.
	ms := &v1alpha1.ModelService{}
	require.NoError(t, yaml.UnmarshalStrict([]byte(groupService), ms))
	ms.SetDefaults()
	require.Nil(t, ms.Validate())

	cfg := kubetest.Start(t)
	c := kubetest.Client(t, cfg)
	ctx := context.Background()
	require.NoError(t, c.Create(ctx, groupServiceWith(t, func(map[string]any) {}), client.DryRunAll), "the issue's example")

	for name, tc := range map[string]struct {
		edit func(map[string]any)
		want string
	}{
		"tensor 0": {func(tm map[string]any) { tm["parallelism"] = map[string]any{"tensor": 0} },
			"spec.template.parallelism.tensor: Invalid value: 0"},
		"data beyond the bound": {func(tm map[string]any) { tm["parallelism"] = map[string]any{"data": 4096} },
			"spec.template.parallelism.data: Invalid value: 4096"},
		"product beyond the bound": {func(tm map[string]any) {
			tm["parallelism"] = map[string]any{"tensor": 1024, "pipeline": 1024, "data": 1024}
		}, "tensor × pipeline × data must be at most 1024 accelerators per replica"},
		"expert over one rank": {func(tm map[string]any) { tm["parallelism"] = map[string]any{"pipeline": 2, "expert": true} },
			"spec.template.parallelism.expert: Invalid value"},
		"acceleratorsPerNode 0": {func(tm map[string]any) { tm["acceleratorsPerNode"] = 0 },
			"spec.template.acceleratorsPerNode: Invalid value: 0"},
		"groupSize not dividing": {func(tm map[string]any) { tm["groupSize"] = 3 },
			"spec.template.groupSize: Invalid value: groupSize must divide"},
		"group too big for the nodes": {func(tm map[string]any) { tm["groupSize"] = 1 },
			"the pods of a group would need more accelerators than acceleratorsPerNode"},
		"uneven derived split": {func(tm map[string]any) {
			tm["parallelism"] = map[string]any{"tensor": 9}
		}, "spec.template.acceleratorsPerNode: Invalid value: tensor × pipeline × data does not split evenly"},
		"uneven split on a variant": {func(tm map[string]any) {
			tm["accelerators"].([]any)[1].(map[string]any)["acceleratorsPerNode"] = 3
		}, "spec.template.accelerators: Invalid value: tensor × pipeline × data does not fit"},
		"role groupSize 0": {func(tm map[string]any) {
			tm["roles"].(map[string]any)["decode"].(map[string]any)["groupSize"] = 0
		}, "spec.template.roles.decode.groupSize: Invalid value: 0"},
		"role parallelism beyond the bound": {func(tm map[string]any) {
			tm["roles"].(map[string]any)["prefill"].(map[string]any)["parallelism"] = map[string]any{"tensor": 2048}
		}, "spec.template.roles.prefill.parallelism.tensor: Invalid value: 2048"},
		"parallelism not an object": {func(tm map[string]any) { tm["parallelism"] = "tensor=8" },
			"spec.template.parallelism: Invalid value: \"string\""},
	} {
		t.Run(name, func(t *testing.T) {
			require.ErrorContains(t, c.Create(ctx, groupServiceWith(t, tc.edit), client.DryRunAll), tc.want)
		})
	}

	// A revision inlines the template: the same rules, at spec.*.
	rev := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "serving.kvasir.dev/v1alpha1", "kind": "ModelRevision",
		"metadata": map[string]any{"name": "deepseek-00001", "namespace": "default"},
		"spec": map[string]any{"model": "m", "engine": map[string]any{"type": "vllm"},
			"parallelism": map[string]any{"tensor": 8, "pipeline": 2}, "groupSize": 3},
	}}
	require.ErrorContains(t, c.Create(ctx, rev, client.DryRunAll), "spec.groupSize: Invalid value: groupSize must divide")
	rev.Object["spec"].(map[string]any)["groupSize"] = 2
	require.NoError(t, c.Create(ctx, rev, client.DryRunAll))
}
