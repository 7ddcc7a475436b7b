package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of the API; the same in local mode and on Kubernetes.
const (
	DefaultEnginePort             = 8000
	DefaultTimeoutSeconds         = 600
	DefaultScaleToZeroGracePeriod = 30 * time.Second
	DefaultStableWindow           = 60 * time.Second
	DefaultPanicWindowPercent     = 10
	DefaultPanicThresholdPercent  = 200
	DefaultInitialScale           = 1
	DefaultTargetConcurrency      = 8.0
)

// SetDefaults fills unset fields. It is idempotent. There is no defaulting
// webhook: the controller and `kvasir local` default what they read, and a
// revision is cut from the defaulted template, so it carries every default.
func (ms *ModelService) SetDefaults() {
	if ms.Spec.Model == "" {
		ms.Spec.Model = ms.Name
	}
	ms.Spec.Template.SetDefaults()
}

// SetDefaults fills the template's unset fields; a role's unset scaling
// fields come from the template's, and the unset sizes of a parallelism
// (the template's or a role's) are 1. It is idempotent.
func (t *RevisionTemplate) SetDefaults() {
	if t.Engine.Type == "" {
		t.Engine.Type = EngineVLLM
	}
	if t.Engine.Port == 0 {
		t.Engine.Port = DefaultEnginePort
	}
	if t.TimeoutSeconds == 0 {
		t.TimeoutSeconds = DefaultTimeoutSeconds
	}
	t.Scaling.SetDefaults()
	// Parallelism is defaulted where it is set, never added: a template
	// written before it existed keeps comparing equal to its revisions.
	if t.Parallelism != nil {
		t.Parallelism.SetDefaults()
	}
	if t.Roles != nil {
		for _, r := range []*RoleSpec{t.Roles.Prefill, t.Roles.Decode} {
			if r != nil && r.Scaling != nil {
				r.Scaling.inherit(&t.Scaling)
			}
			if r != nil && r.Parallelism != nil {
				r.Parallelism.SetDefaults()
			}
		}
	}
}

// SetDefaults fills unset scaling fields.
func (s *ScalingSpec) SetDefaults() {
	if s.MinScale == nil {
		s.MinScale = ptr(int32(0))
	}
	if s.MaxScale == nil {
		s.MaxScale = ptr(int32(0)) // 0 = no upper bound but capacity
	}
	if s.InitialScale == nil {
		s.InitialScale = ptr(int32(DefaultInitialScale))
	}
	if s.Target == nil {
		s.Target = &ScalingTarget{}
	}
	if *s.Target == (ScalingTarget{}) {
		s.Target.Concurrency = ptr(DefaultTargetConcurrency)
	}
	if s.ScaleToZeroGracePeriod == nil {
		s.ScaleToZeroGracePeriod = &metav1.Duration{Duration: DefaultScaleToZeroGracePeriod}
	}
	if s.StableWindow == nil {
		s.StableWindow = &metav1.Duration{Duration: DefaultStableWindow}
	}
	if s.PanicWindowPercent == nil {
		s.PanicWindowPercent = ptr(int32(DefaultPanicWindowPercent))
	}
	if s.PanicThresholdPercent == nil {
		s.PanicThresholdPercent = ptr(int32(DefaultPanicThresholdPercent))
	}
}

// inherit fills a role's unset scaling fields from the template's.
func (s *ScalingSpec) inherit(from *ScalingSpec) {
	if s.MinScale == nil {
		s.MinScale = from.MinScale
	}
	if s.MaxScale == nil {
		s.MaxScale = from.MaxScale
	}
	if s.InitialScale == nil {
		s.InitialScale = from.InitialScale
	}
	if s.Target == nil {
		s.Target = from.Target
	}
	if s.ScaleToZeroGracePeriod == nil {
		s.ScaleToZeroGracePeriod = from.ScaleToZeroGracePeriod
	}
	if s.StableWindow == nil {
		s.StableWindow = from.StableWindow
	}
	if s.PanicWindowPercent == nil {
		s.PanicWindowPercent = from.PanicWindowPercent
	}
	if s.PanicThresholdPercent == nil {
		s.PanicThresholdPercent = from.PanicThresholdPercent
	}
}

func ptr[T any](v T) *T { return &v }
