package v1alpha1

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// designExample is the ModelService of the design document.
const designExample = `
apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: llama, namespace: default}
spec:
  model: llama-3-8b
  template:
    engine:
      type: sim
      image: vllm/vllm-openai:v0.11.0
      command: []
      args: ["--startup-delay=2s"]
      env: []
      port: 8000
    resources: {limits: {nvidia.com/gpu: "1"}}
    accelerators:
      - {name: h100, resources: {limits: {nvidia.com/gpu: "1"}}, cost: 3}
      - {name: ascend, resources: {limits: {huawei.com/ascend-910b: "1"}}, cost: 2}
    roles:
      prefill: {scaling: {minScale: 0, maxScale: 4}}
      decode:  {scaling: {minScale: 0, maxScale: 8}}
    scaling:
      minScale: 0
      maxScale: 4
      initialScale: 1
      target: {concurrency: 8}
      scaleToZeroGracePeriod: 30s
      stableWindow: 60s
      panicWindowPercent: 10
      panicThresholdPercent: 200
    containerConcurrency: 0
    timeoutSeconds: 600
  routing:
    plugins: [{name: kv-cache-aware, weight: 3}, {name: least-request, weight: 2}]
  traffic:
    - {revisionName: llama-00001, percent: 90}
    - {latestRevision: true, percent: 10, tag: canary}
`

func designService(t *testing.T) *ModelService {
	t.Helper()
	ms := &ModelService{}
	require.NoError(t, yaml.UnmarshalStrict([]byte(designExample), ms))
	ms.SetDefaults()
	return ms
}

func TestModelServiceValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*ModelService)
		paths  []string // nil = valid
		msg    string
	}{
		{name: "design example", mutate: func(*ModelService) {}},
		{name: "no traffic", mutate: func(ms *ModelService) { ms.Spec.Traffic = nil }},
		{name: "tag-only target without percent", mutate: func(ms *ModelService) {
			ms.Spec.Traffic = []TrafficTarget{{LatestRevision: ptr(true), Percent: ptr(int64(100))},
				{RevisionName: "llama-00001", Tag: "old"}}
		}},
		{name: "no name", mutate: func(ms *ModelService) { ms.Name = "" },
			paths: []string{"metadata.name"}},
		{name: "name not a DNS-1035 label", mutate: func(ms *ModelService) { ms.Name = "1llama" },
			paths: []string{"metadata.name"}, msg: "DNS-1035 label"},
		{name: "name leaves no room for revision suffixes", mutate: func(ms *ModelService) {
			ms.Name = strings.Repeat("a", MaxServiceNameLength+1)
		}, paths: []string{"metadata.name"}, msg: "at most 57"},
		{name: "model with @", mutate: func(ms *ModelService) { ms.Spec.Model = "a@b" },
			paths: []string{"spec.model"}},
		{name: "adapter named like the model", mutate: func(ms *ModelService) { ms.Spec.LoRAAdapters = []string{"llama-3-8b"} },
			paths: []string{"spec.loraAdapters[0]"}},
		{name: "duplicate adapter", mutate: func(ms *ModelService) { ms.Spec.LoRAAdapters = []string{"a", "a"} },
			paths: []string{"spec.loraAdapters[1]"}},
		{name: "engine type", mutate: func(ms *ModelService) { ms.Spec.Template.Engine.Type = "tpu" },
			paths: []string{"spec.template.engine.type"}},
		{name: "engine port", mutate: func(ms *ModelService) { ms.Spec.Template.Engine.Port = 65536 },
			paths: []string{"spec.template.engine.port"}},
		{name: "minScale above maxScale", mutate: func(ms *ModelService) {
			ms.Spec.Template.Scaling.MinScale = ptr(int32(5))
		}, paths: []string{"spec.template.scaling.minScale"}},
		{name: "prefill minScale above maxScale", mutate: func(ms *ModelService) {
			ms.Spec.Template.Roles.Prefill.Scaling.MinScale = ptr(int32(5))
		}, paths: []string{"spec.template.roles.prefill.scaling.minScale"}},
		{name: "PD ratio min above max", mutate: func(ms *ModelService) {
			ms.Spec.Template.Roles.Ratio = &RoleRatio{Min: ptr(2.0), Max: ptr(1.0)}
		}, paths: []string{"spec.template.roles.ratio.min"}},
		{name: "PD ratio max zero", mutate: func(ms *ModelService) {
			ms.Spec.Template.Roles.Ratio = &RoleRatio{Max: ptr(0.0)}
		}, paths: []string{"spec.template.roles.ratio.max"}},
		{name: "PD ratio", mutate: func(ms *ModelService) {
			ms.Spec.Template.Roles.Ratio = &RoleRatio{Min: ptr(0.25), Max: ptr(1.0)}
		}},
		{name: "maxScale 0 is unbounded", mutate: func(ms *ModelService) {
			ms.Spec.Template.Scaling.MinScale, ms.Spec.Template.Scaling.MaxScale = ptr(int32(5)), ptr(int32(0))
		}},
		{name: "negative grace period", mutate: func(ms *ModelService) {
			ms.Spec.Template.Scaling.ScaleToZeroGracePeriod = &metav1.Duration{Duration: -1}
		}, paths: []string{"spec.template.scaling.scaleToZeroGracePeriod"}},
		{name: "duplicate accelerator", mutate: func(ms *ModelService) { ms.Spec.Template.Accelerators[1].Name = "h100" },
			paths: []string{"spec.template.accelerators[1].name"}},
		{name: "percents not 100", mutate: func(ms *ModelService) { ms.Spec.Traffic[1].Percent = ptr(int64(5)) },
			paths: []string{"spec.traffic.percent"}, msg: "must sum to 100"},
		{name: "percent out of range", mutate: func(ms *ModelService) {
			ms.Spec.Traffic[0].Percent, ms.Spec.Traffic[1].Percent = ptr(int64(110)), ptr(int64(-10))
		}, paths: []string{"spec.traffic[0].percent", "spec.traffic[1].percent"}},
		{name: "both revisionName and latestRevision", mutate: func(ms *ModelService) { ms.Spec.Traffic[1].RevisionName = "llama-00002" },
			paths: []string{"spec.traffic[1].latestRevision", "spec.traffic[1].revisionName"}},
		{name: "neither revisionName nor latestRevision", mutate: func(ms *ModelService) { ms.Spec.Traffic[1].LatestRevision = ptr(false) },
			paths: []string{"spec.traffic[1].latestRevision", "spec.traffic[1].revisionName"}},
		{name: "duplicate tags", mutate: func(ms *ModelService) { ms.Spec.Traffic[0].Tag = "canary" },
			paths: []string{"spec.traffic[1].tag"}, msg: `duplicate tag "canary"`},
		{name: "tag not a DNS label", mutate: func(ms *ModelService) { ms.Spec.Traffic[1].Tag = "Canary" },
			paths: []string{"spec.traffic[1].tag"}},
		{name: "revisionName not a DNS label", mutate: func(ms *ModelService) { ms.Spec.Traffic[0].RevisionName = "llama_00001" },
			paths: []string{"spec.traffic[0].revisionName"}},
		{name: "too many traffic targets", mutate: func(ms *ModelService) {
			ms.Spec.Traffic = nil
			for i := range MaxTrafficTargets + 1 {
				p := int64(0)
				if i == 0 {
					p = 100
				}
				ms.Spec.Traffic = append(ms.Spec.Traffic, TrafficTarget{RevisionName: RevisionName("llama", i+1), Percent: &p})
			}
		}, paths: []string{"spec.traffic"}},
		{name: "duplicate routing plugin", mutate: func(ms *ModelService) { ms.Spec.Routing.Plugins[1].Name = "kv-cache-aware" },
			paths: []string{"spec.routing.plugins[1].name"}},
		{name: "negative plugin weight", mutate: func(ms *ModelService) { ms.Spec.Routing.Plugins[0].Weight = -1 },
			paths: []string{"spec.routing.plugins[0].weight"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ms := designService(t)
			tc.mutate(ms)
			err := ms.Validate()
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

func TestSchemeRegistersBothKinds(t *testing.T) {
	s := runtime.NewScheme()
	require.NoError(t, AddToScheme(s))
	for kind, want := range map[string]runtime.Object{
		KindModelService:           &ModelService{},
		KindModelService + "List":  &ModelServiceList{},
		KindModelRevision:          &ModelRevision{},
		KindModelRevision + "List": &ModelRevisionList{},
	} {
		obj, err := s.New(SchemeGroupVersion.WithKind(kind))
		require.NoError(t, err, kind)
		assert.IsType(t, want, obj)
	}
	gvks, _, err := s.ObjectKinds(&ModelRevision{})
	require.NoError(t, err)
	assert.Equal(t, SchemeGroupVersion.WithKind(KindModelRevision), gvks[0])
	assert.Equal(t, "modelrevisions.serving.kvasir.dev", Resource("modelrevisions").String())
	assert.Equal(t, "ModelService.serving.kvasir.dev", Kind(KindModelService).String())
}

func TestDeepCopyIsDeep(t *testing.T) {
	ms := designService(t)
	ms.Status.SetTraffic([]TrafficTarget{{RevisionName: "llama-00001", Percent: ptr(int64(100))}})
	cp := ms.DeepCopy()
	assert.Equal(t, ms, cp)
	*cp.Spec.Traffic[0].Percent = 1
	cp.Spec.Template.Accelerators[0].Resources.Limits["nvidia.com/gpu"] = *ms.Spec.Template.Resources.Limits.Cpu()
	*cp.Status.Traffic[0].Percent = 5
	assert.Equal(t, int64(90), *ms.Spec.Traffic[0].Percent)
	assert.Equal(t, "1", ms.Spec.Template.Accelerators[0].Resources.Limits.Name("nvidia.com/gpu", "").String())
	assert.Equal(t, int64(100), *ms.Status.Traffic[0].Percent)
}

func TestAdapterNamesThatReadAsFlagsAreRefused(t *testing.T) {
	for _, bad := range []string{"--api-key", "-x", "a=b", "a,b", "a b"} {
		ms := &ModelService{}
		ms.Name = "m"
		ms.Spec.Template.Engine = EngineSpec{Type: EngineSim}
		ms.Spec.LoRAAdapters = []string{bad}
		ms.SetDefaults()
		err := ms.Validate()
		if err == nil || !strings.Contains(err.Error(), "loraAdapters[0]") {
			t.Errorf("adapter %q: %v", bad, err)
		}
	}
}
