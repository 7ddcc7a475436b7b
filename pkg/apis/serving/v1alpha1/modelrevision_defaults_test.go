package v1alpha1

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestModelRevisionSetDefaults(t *testing.T) {
	defaultScaling := ScalingSpec{
		MinScale:               ptr(int32(0)),
		MaxScale:               ptr(int32(0)),
		InitialScale:           ptr(int32(DefaultInitialScale)),
		Target:                 &ScalingTarget{Concurrency: ptr(DefaultTargetConcurrency)},
		ScaleToZeroGracePeriod: &metav1.Duration{Duration: DefaultScaleToZeroGracePeriod},
		StableWindow:           &metav1.Duration{Duration: DefaultStableWindow},
		PanicWindowPercent:     ptr(int32(DefaultPanicWindowPercent)),
		PanicThresholdPercent:  ptr(int32(DefaultPanicThresholdPercent)),
	}
	withDefaults := func(f func(*ModelRevisionSpec)) ModelRevisionSpec {
		s := ModelRevisionSpec{
			RevisionTemplate: RevisionTemplate{
				Engine:         EngineSpec{Type: EngineVLLM, Port: DefaultEnginePort},
				Scaling:        defaultScaling,
				TimeoutSeconds: DefaultTimeoutSeconds,
			},
			Replicas: ptr(int32(DefaultInitialScale)),
		}
		f(&s)
		return s
	}
	tests := []struct {
		name string
		in   ModelRevision
		want ModelRevisionSpec
	}{{
		name: "empty: model from the service label",
		in: ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "llama-00001",
			Labels: map[string]string{LabelService: "llama"}}},
		want: withDefaults(func(s *ModelRevisionSpec) { s.Model = "llama" }),
	}, {
		name: "no label: model from the name",
		in:   ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "solo"}},
		want: withDefaults(func(s *ModelRevisionSpec) { s.Model = "solo" }),
	}, {
		name: "set fields are kept",
		in: ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "llama-00002"}, Spec: ModelRevisionSpec{
			Model: "llama-3-8b",
			RevisionTemplate: RevisionTemplate{
				Engine:         EngineSpec{Type: EngineSim, Port: 9000},
				TimeoutSeconds: 30,
				Scaling:        ScalingSpec{InitialScale: ptr(int32(3)), StableWindow: &metav1.Duration{Duration: time.Second}},
			},
			Replicas: ptr(int32(0)),
		}},
		want: withDefaults(func(s *ModelRevisionSpec) {
			s.Model = "llama-3-8b"
			s.Engine = EngineSpec{Type: EngineSim, Port: 9000}
			s.TimeoutSeconds = 30
			s.Scaling.InitialScale = ptr(int32(3))
			s.Scaling.StableWindow = &metav1.Duration{Duration: time.Second}
			s.Replicas = ptr(int32(0))
		}),
	}, {
		name: "replicas from the template's initialScale",
		in: ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "a-00001"}, Spec: ModelRevisionSpec{
			Model:            "a",
			RevisionTemplate: RevisionTemplate{Scaling: ScalingSpec{InitialScale: ptr(int32(2))}},
		}},
		want: withDefaults(func(s *ModelRevisionSpec) {
			s.Model = "a"
			s.Scaling.InitialScale = ptr(int32(2))
			s.Replicas = ptr(int32(2))
		}),
	}, {
		name: "split revision: replicas from decode's initialScale, roles inherit the rest",
		in: ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: "pd-00001"}, Spec: ModelRevisionSpec{
			Model: "pd",
			RevisionTemplate: RevisionTemplate{Roles: &RolesSpec{
				Prefill: &RoleSpec{Scaling: &ScalingSpec{InitialScale: ptr(int32(1))}},
				Decode:  &RoleSpec{Scaling: &ScalingSpec{InitialScale: ptr(int32(4))}},
			}},
		}},
		want: withDefaults(func(s *ModelRevisionSpec) {
			s.Model = "pd"
			prefill, decode := defaultScaling, defaultScaling
			prefill.InitialScale, decode.InitialScale = ptr(int32(1)), ptr(int32(4))
			s.Roles = &RolesSpec{Prefill: &RoleSpec{Scaling: &prefill}, Decode: &RoleSpec{Scaling: &decode}}
			s.Replicas = ptr(int32(4))
		}),
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.in.DeepCopy()
			r.SetDefaults()
			assert.Equal(t, tc.want, r.Spec)
			again := r.DeepCopy()
			again.SetDefaults()
			assert.Equal(t, r, again, "SetDefaults is idempotent")
			assert.Nil(t, r.Validate(), "defaults validate")
		})
	}
}

func TestModelServiceSetDefaultsSharesTheTemplate(t *testing.T) {
	ms := &ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama"}}
	ms.SetDefaults()
	r := &ModelRevision{ObjectMeta: metav1.ObjectMeta{Name: RevisionName("llama", 1)},
		Spec: ModelRevisionSpec{Model: ms.Spec.Model, RevisionTemplate: *ms.Spec.Template.DeepCopy()}}
	before := r.Spec.RevisionTemplate.DeepCopy()
	r.SetDefaults()
	assert.Equal(t, *before, r.Spec.RevisionTemplate, "a revision cut from a defaulted service needs no more template defaults")
	assert.Equal(t, "llama", r.Spec.Model)
}
