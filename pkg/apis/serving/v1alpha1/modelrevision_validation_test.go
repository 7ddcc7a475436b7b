package v1alpha1

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"knative.dev/pkg/apis"
)

// validRevision is a defaulted revision as the controller cuts it.
func validRevision() *ModelRevision {
	r := &ModelRevision{
		ObjectMeta: metav1.ObjectMeta{Name: "llama-00001", Namespace: "default",
			Labels: map[string]string{LabelService: "llama", LabelRevisionGeneration: "1"}},
		Spec: ModelRevisionSpec{
			Model:        "llama-3-8b",
			LoRAAdapters: []string{"sql"},
			RevisionTemplate: RevisionTemplate{
				Engine: EngineSpec{Type: EngineSim, Args: []string{"--startup-delay=2s"}},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
					"nvidia.com/gpu": resource.MustParse("1")}},
				Accelerators: []AcceleratorVariant{{Name: "h100", Cost: 3}, {Name: "ascend", Cost: 2}},
			},
		},
	}
	r.SetDefaults()
	return r
}

// errorPaths lists a FieldError's paths, sorted as Error() prints them.
func errorPaths(fe *apis.FieldError) []string {
	if fe == nil {
		return nil
	}
	var out []string
	for _, e := range fe.WrappedErrors() {
		out = append(out, e.Paths...)
	}
	if len(out) == 0 {
		out = fe.Paths
	}
	return out
}

func TestModelRevisionValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*ModelRevision)
		paths  []string // nil = valid
		msg    string   // a substring of Error()
	}{
		{name: "valid", mutate: func(*ModelRevision) {}},
		{name: "split roles", mutate: func(r *ModelRevision) {
			r.Spec.Roles = &RolesSpec{Prefill: &RoleSpec{}, Decode: &RoleSpec{Scaling: &ScalingSpec{MaxScale: ptr(int32(8))}}}
		}},
		{name: "replicas zero", mutate: func(r *ModelRevision) { r.Spec.Replicas = ptr(int32(0)) }},
		{name: "no name", mutate: func(r *ModelRevision) { r.Name = "" },
			paths: []string{"metadata.name"}, msg: "missing field(s)"},
		{name: "name not a DNS label", mutate: func(r *ModelRevision) { r.Name = "Llama_00001" },
			paths: []string{"metadata.name"}, msg: "DNS-1035 label"},
		{name: "name too long", mutate: func(r *ModelRevision) { r.Name = strings.Repeat("a", 64) },
			paths: []string{"metadata.name"}},
		{name: "no model", mutate: func(r *ModelRevision) { r.Spec.Model = "" },
			paths: []string{"spec.model"}, msg: "missing field(s)"},
		{name: "model with a tag separator", mutate: func(r *ModelRevision) { r.Spec.Model = "llama@canary" },
			paths: []string{"spec.model"}},
		{name: "adapter named like the model", mutate: func(r *ModelRevision) { r.Spec.LoRAAdapters = []string{"sql", "llama-3-8b"} },
			paths: []string{"spec.loraAdapters[1]"}, msg: "duplicate"},
		{name: "empty adapter", mutate: func(r *ModelRevision) { r.Spec.LoRAAdapters = []string{""} },
			paths: []string{"spec.loraAdapters[0]"}},
		{name: "unknown engine", mutate: func(r *ModelRevision) { r.Spec.Engine.Type = "tpu" },
			paths: []string{"spec.engine.type"}},
		{name: "custom engine without command or image", mutate: func(r *ModelRevision) { r.Spec.Engine.Type = EngineCustom },
			paths: []string{"spec.engine.command", "spec.engine.image"}},
		{name: "port out of range", mutate: func(r *ModelRevision) { r.Spec.Engine.Port = 70000 },
			paths: []string{"spec.engine.port"}, msg: "expected 1 <= 70000 <= 65535"},
		{name: "negative concurrency", mutate: func(r *ModelRevision) { r.Spec.ContainerConcurrency = -1 },
			paths: []string{"spec.containerConcurrency"}},
		{name: "minScale above maxScale", mutate: func(r *ModelRevision) {
			r.Spec.Scaling.MinScale, r.Spec.Scaling.MaxScale = ptr(int32(3)), ptr(int32(1))
		}, paths: []string{"spec.scaling.minScale"}, msg: "must be <= maxScale"},
		{name: "decode minScale above maxScale", mutate: func(r *ModelRevision) {
			r.Spec.Roles = &RolesSpec{Prefill: &RoleSpec{}, Decode: &RoleSpec{Scaling: &ScalingSpec{MinScale: ptr(int32(3)), MaxScale: ptr(int32(1))}}}
		}, paths: []string{"spec.roles.decode.scaling.minScale"}},
		{name: "roles without decode", mutate: func(r *ModelRevision) { r.Spec.Roles = &RolesSpec{Prefill: &RoleSpec{}} },
			paths: []string{"spec.roles.decode", "spec.roles.prefill"}},
		{name: "kv-cache target above 1", mutate: func(r *ModelRevision) { r.Spec.Scaling.Target.KVCacheUsage = ptr(1.5) },
			paths: []string{"spec.scaling.target.kvCacheUsage"}},
		{name: "duplicate accelerator", mutate: func(r *ModelRevision) {
			r.Spec.Accelerators = append(r.Spec.Accelerators, AcceleratorVariant{Name: "h100"})
		}, paths: []string{"spec.accelerators[2].name"}},
		{name: "negative accelerator cost", mutate: func(r *ModelRevision) { r.Spec.Accelerators[1].Cost = -1 },
			paths: []string{"spec.accelerators[1].cost"}},
		{name: "too many accelerators", mutate: func(r *ModelRevision) {
			r.Spec.Accelerators = nil
			for i := range MaxAcceleratorVariants + 1 {
				r.Spec.Accelerators = append(r.Spec.Accelerators, AcceleratorVariant{Name: RevisionName("v", i)})
			}
		}, paths: []string{"spec.accelerators"}},
		{name: "negative replicas", mutate: func(r *ModelRevision) { r.Spec.Replicas = ptr(int32(-1)) },
			paths: []string{"spec.replicas"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := validRevision()
			tc.mutate(r)
			err := r.Validate()
			if tc.paths == nil {
				assert.Nil(t, err)
				return
			}
			require.NotNil(t, err)
			assert.ElementsMatch(t, tc.paths, errorPaths(err), "error: %v", err)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

func TestModelRevisionValidateUpdate(t *testing.T) {
	old := validRevision()

	scaled := old.DeepCopy()
	scaled.Spec.Replicas = ptr(int32(7))
	scaled.Status.SetReplicas(7, 3)
	scaled.Labels["extra"] = "label"
	assert.Nil(t, scaled.ValidateUpdate(old), "replicas, status and metadata may change")

	// The same quantity written differently is no change.
	same := old.DeepCopy()
	same.Spec.Resources.Limits["nvidia.com/gpu"] = resource.MustParse("1000m")
	assert.Nil(t, same.ValidateUpdate(old))

	for name, mutate := range map[string]func(*ModelRevision){
		"engine args":   func(r *ModelRevision) { r.Spec.Engine.Args = append(r.Spec.Engine.Args, "--x") },
		"model":         func(r *ModelRevision) { r.Spec.Model = "other" },
		"adapters":      func(r *ModelRevision) { r.Spec.LoRAAdapters = nil },
		"scaling":       func(r *ModelRevision) { r.Spec.Scaling.MaxScale = ptr(int32(9)) },
		"timeout":       func(r *ModelRevision) { r.Spec.TimeoutSeconds = 1 },
		"accelerators":  func(r *ModelRevision) { r.Spec.Accelerators = r.Spec.Accelerators[:1] },
		"gpu resources": func(r *ModelRevision) { r.Spec.Resources.Limits["nvidia.com/gpu"] = resource.MustParse("2") },
	} {
		t.Run(name, func(t *testing.T) {
			changed := old.DeepCopy()
			mutate(changed)
			err := changed.ValidateUpdate(old)
			require.NotNil(t, err)
			assert.Equal(t, []string{"spec"}, errorPaths(err))
			assert.Contains(t, err.Error(), "immutable")
		})
	}

	// Invalid values are still reported next to immutability.
	bad := old.DeepCopy()
	bad.Spec.Engine.Port = 0
	assert.ElementsMatch(t, []string{"spec", "spec.engine.port"}, errorPaths(bad.ValidateUpdate(old)))
}

func TestRevisionName(t *testing.T) {
	assert.Equal(t, "llama-00001", RevisionName("llama", 1))
	assert.Equal(t, "llama-00042", RevisionName("llama", 42))
	assert.Equal(t, "llama-123456", RevisionName("llama", 123456))
	name := RevisionName(strings.Repeat("a", MaxServiceNameLength), 99999)
	assert.Nil(t, validateDNSLabel(name, 63, "metadata.name"), "the longest service name leaves room for the suffix")
}
