package v1alpha1

import (
	"fmt"

	"knative.dev/pkg/apis"
)

// MaxParallelSize bounds each of parallelism.tensor, .pipeline and .data,
// their product (the accelerators of one replica), acceleratorsPerNode and
// groupSize. The CRDs carry the same bounds.
const MaxParallelSize = 1024

// GroupShape is the shape of one replica: its parallelism with the defaults
// applied, the accelerators it needs and how they split over pods. A shape
// of more than one pod is a serving group: pod 0, the leader, serves the
// API; pods 1 to Pods-1 are workers.
//
// +kubebuilder:object:generate=false
type GroupShape struct {
	// Tensor, Pipeline and Data are the parallel sizes (at least 1).
	Tensor, Pipeline, Data int32
	// Expert is expert parallelism for the expert layers.
	Expert bool
	// Declared reports whether the template (or the role) sets
	// parallelism. Engines get parallelism flags only then: a template
	// without it keeps the engine's defaults and its own args.
	Declared bool
	// Accelerators of one replica: Tensor × Pipeline × Data.
	Accelerators int32
	// Pods of one replica: 1, or the size of its serving group.
	Pods int32
	// AcceleratorsPerPod is Accelerators / Pods, the same on every pod.
	AcceleratorsPerPod int32
}

// Grouped reports whether a replica spans several pods.
func (g GroupShape) Grouped() bool { return g.Pods > 1 }

// SetDefaults fills unset sizes with 1. It is idempotent.
func (p *ParallelismSpec) SetDefaults() {
	for _, f := range []**int32{&p.Tensor, &p.Pipeline, &p.Data} {
		if *f == nil {
			*f = ptr(int32(1))
		}
	}
}

// DeriveGroup returns the shape of one replica with parallelism p (nil:
// one accelerator, undeclared) on nodes of acceleratorsPerNode
// accelerators (nil: a replica is one pod), split into groupSize pods when
// that is set: accelerators per replica = tensor × pipeline × data; pods
// per replica = groupSize, else ceil(accelerators / acceleratorsPerNode),
// else 1. Tensor 8 × pipeline 2 on 8-accelerator nodes is 2 pods of 8. It
// fails when a size is out of bounds (1 to MaxParallelSize), when expert
// parallelism has tensor × data = 1, or when the accelerators do not split
// evenly over the pods or do not fit a node. Unset sizes of p count as 1; p
// is not changed.
func DeriveGroup(p *ParallelismSpec, acceleratorsPerNode, groupSize *int32) (GroupShape, error) {
	paths := groupPaths{parallelism: "parallelism", acceleratorsPerNode: "acceleratorsPerNode", groupSize: "groupSize"}
	errs := validateParallelism(p).ViaField(paths.parallelism)
	errs = errs.Also(validateSize(acceleratorsPerNode, paths.acceleratorsPerNode))
	errs = errs.Also(validateSize(groupSize, paths.groupSize))
	if errs != nil {
		return GroupShape{}, errs
	}
	g, errs := deriveGroup(p, acceleratorsPerNode, groupSize, paths)
	if errs != nil {
		return g, errs
	}
	return g, nil
}

// groupPaths are the field paths of a derivation's three inputs, for its
// errors: the role's or the template's parallelism and groupSize, the
// variant's or the template's acceleratorsPerNode.
type groupPaths struct {
	parallelism, acceleratorsPerNode, groupSize string
}

// sizeOf is an unset or a set size.
func sizeOf(v *int32) int64 {
	if v == nil {
		return 1
	}
	return int64(*v)
}

// deriveGroup splits the accelerators of p over pods. The sizes must have
// passed validateParallelism and validateSize; it still never divides by
// zero or overflows.
func deriveGroup(p *ParallelismSpec, acceleratorsPerNode, groupSize *int32, paths groupPaths) (GroupShape, *apis.FieldError) {
	g := GroupShape{Tensor: 1, Pipeline: 1, Data: 1, Pods: 1}
	if p != nil {
		g.Declared = true
		g.Tensor, g.Pipeline, g.Data = int32(sizeOf(p.Tensor)), int32(sizeOf(p.Pipeline)), int32(sizeOf(p.Data))
		g.Expert = p.Expert
	}
	acc := int64(g.Tensor) * int64(g.Pipeline) * int64(g.Data)
	if acc < 1 || acc > MaxParallelSize {
		return GroupShape{}, apis.ErrOutOfBoundsValue(acc, 1, MaxParallelSize, paths.parallelism)
	}
	g.Accelerators = int32(acc)
	pods := int64(1)
	switch {
	case groupSize != nil:
		pods = int64(*groupSize)
		if pods < 1 || acc%pods != 0 {
			return GroupShape{}, apis.ErrInvalidValue(pods, paths.groupSize, fmt.Sprintf(
				"must divide tensor × pipeline × data (%d accelerators): every pod of a group holds the same number", acc))
		}
		if acceleratorsPerNode != nil && *acceleratorsPerNode > 0 && acc/pods > int64(*acceleratorsPerNode) {
			return GroupShape{}, &apis.FieldError{
				Message: fmt.Sprintf("%d pods of %d accelerators each do not fit nodes of %d (acceleratorsPerNode)",
					pods, acc/pods, *acceleratorsPerNode),
				Paths: []string{paths.groupSize, paths.acceleratorsPerNode},
			}
		}
	case acceleratorsPerNode != nil && *acceleratorsPerNode > 0:
		per := int64(*acceleratorsPerNode)
		pods = (acc + per - 1) / per
		if acc%pods != 0 {
			return GroupShape{}, &apis.FieldError{
				Message: fmt.Sprintf("tensor × pipeline × data (%d accelerators) does not split evenly over the %d pods that nodes of %d need: set groupSize or change the parallelism",
					acc, pods, per),
				Paths: []string{paths.parallelism, paths.acceleratorsPerNode},
			}
		}
	}
	g.Pods = int32(pods)
	g.AcceleratorsPerPod = int32(acc / pods)
	return g, nil
}

// validateParallelism checks the bounds of p's sizes (paths tensor,
// pipeline, data, expert); unset sizes are fine.
func validateParallelism(p *ParallelismSpec) *apis.FieldError {
	if p == nil {
		return nil
	}
	var errs *apis.FieldError
	for _, f := range []struct {
		name string
		v    *int32
	}{{"tensor", p.Tensor}, {"pipeline", p.Pipeline}, {"data", p.Data}} {
		errs = errs.Also(validateSize(f.v, f.name))
	}
	if errs != nil {
		return errs
	}
	if acc := sizeOf(p.Tensor) * sizeOf(p.Pipeline) * sizeOf(p.Data); acc > MaxParallelSize {
		errs = errs.Also(&apis.FieldError{
			Message: fmt.Sprintf("tensor × pipeline × data is %d accelerators per replica, more than %d", acc, MaxParallelSize),
			Paths:   []string{"tensor", "pipeline", "data"},
		})
	}
	if p.Expert && sizeOf(p.Tensor)*sizeOf(p.Data) < 2 {
		errs = errs.Also(apis.ErrInvalidValue(true, "expert", "expert parallelism spreads the experts over tensor × data ranks: needs tensor × data > 1"))
	}
	return errs
}

// validateSize checks that a set size is within 1 and MaxParallelSize.
func validateSize(v *int32, field string) *apis.FieldError {
	if v != nil && (*v < 1 || *v > MaxParallelSize) {
		return apis.ErrOutOfBoundsValue(*v, 1, MaxParallelSize, field)
	}
	return nil
}

// roleSpec returns the spec of a role: prefill's for "prefill", decode's
// for any other name when the template is split, nil for a unified
// template (as RoleScaling).
func (t *RevisionTemplate) roleSpec(role string) *RoleSpec {
	if t.Roles == nil {
		return nil
	}
	if role == "prefill" {
		return t.Roles.Prefill
	}
	return t.Roles.Decode
}

// RoleParallelism returns the parallelism of a role ("prefill" or
// "decode"; any role of a unified template): the role's own when it sets
// one, else the template's; nil when neither does.
func (t *RevisionTemplate) RoleParallelism(role string) *ParallelismSpec {
	if r := t.roleSpec(role); r != nil && r.Parallelism != nil {
		return r.Parallelism
	}
	return t.Parallelism
}

// RoleGroupSize returns the explicit group size of a role: the role's own
// when it sets one; else the template's, unless the role sets its own
// parallelism (which replaces the template's parallelism and group size
// together); nil when the size is derived.
func (t *RevisionTemplate) RoleGroupSize(role string) *int32 {
	r := t.roleSpec(role)
	switch {
	case r != nil && r.GroupSize != nil:
		return r.GroupSize
	case r != nil && r.Parallelism != nil:
		return nil
	}
	return t.GroupSize
}

// VariantAcceleratorsPerNode returns the accelerators per node on variant
// v: the variant's own when it sets them, else the template's (nil v: the
// template's).
func (t *RevisionTemplate) VariantAcceleratorsPerNode(v *AcceleratorVariant) *int32 {
	if v != nil && v.AcceleratorsPerNode != nil {
		return v.AcceleratorsPerNode
	}
	return t.AcceleratorsPerNode
}

// Group returns the shape of one replica of role ("prefill" or "decode";
// any role of a unified template) placed on variant v (nil: the template's
// own placement), as DeriveGroup computes it from RoleParallelism,
// VariantAcceleratorsPerNode and RoleGroupSize. A template that passed
// Validate never fails here.
func (t *RevisionTemplate) Group(role string, v *AcceleratorVariant) (GroupShape, error) {
	return DeriveGroup(t.RoleParallelism(role), t.VariantAcceleratorsPerNode(v), t.RoleGroupSize(role))
}

// validateGroups checks the parallelism, accelerators per node and group
// sizes of the template, its variants and its roles, then how each role's
// replicas split over pods on the template's placement and on each variant
// that sets its own accelerators per node. Paths are relative to the
// template.
func (t *RevisionTemplate) validateGroups() *apis.FieldError {
	var errs *apis.FieldError
	errs = errs.Also(validateParallelism(t.Parallelism).ViaField("parallelism"))
	errs = errs.Also(validateSize(t.AcceleratorsPerNode, "acceleratorsPerNode"))
	errs = errs.Also(validateSize(t.GroupSize, "groupSize"))
	for i := range t.Accelerators {
		errs = errs.Also(validateSize(t.Accelerators[i].AcceleratorsPerNode, "acceleratorsPerNode").ViaFieldIndex("accelerators", i))
	}
	roles := []string{""}
	if t.Roles != nil {
		roles = []string{"prefill", "decode"}
		for _, name := range roles {
			if r := t.roleSpec(name); r != nil {
				errs = errs.Also(validateParallelism(r.Parallelism).ViaField("roles", name, "parallelism"))
				errs = errs.Also(validateSize(r.GroupSize, "groupSize").ViaField("roles", name))
			}
		}
	}
	if errs != nil {
		return errs // the shapes of out-of-bounds sizes say nothing more
	}
	seen := map[string]bool{} // roles sharing the template's fields fail alike
	for _, role := range roles {
		paths := t.rolePaths(role)
		for i := -1; i < len(t.Accelerators); i++ {
			var v *AcceleratorVariant
			paths.acceleratorsPerNode = "acceleratorsPerNode"
			if i >= 0 {
				if v = &t.Accelerators[i]; v.AcceleratorsPerNode == nil {
					continue // the template's placement, checked at i = -1
				}
				paths.acceleratorsPerNode = fmt.Sprintf("accelerators[%d].acceleratorsPerNode", i)
			}
			g, fe := deriveGroup(t.RoleParallelism(role), t.VariantAcceleratorsPerNode(v), t.RoleGroupSize(role), paths)
			if fe == nil {
				fe = validateEngineGroup(t.Engine.Type, g, paths)
			}
			if fe != nil && !seen[fe.Error()] {
				seen[fe.Error()] = true
				errs = errs.Also(fe)
			}
		}
	}
	return errs
}

// rolePaths are the paths of the fields a role's group derives from.
func (t *RevisionTemplate) rolePaths(role string) groupPaths {
	p := groupPaths{parallelism: "parallelism", groupSize: "groupSize"}
	r := t.roleSpec(role)
	if r != nil && r.Parallelism != nil {
		p.parallelism = "roles." + role + ".parallelism"
		p.groupSize = "roles." + role + ".groupSize"
	}
	if r != nil && r.GroupSize != nil {
		p.groupSize = "roles." + role + ".groupSize"
	}
	return p
}

// validateEngineGroup checks what an engine's own multi-node launch needs
// of a group beyond an even split (docs/engines.md, "Serving groups").
func validateEngineGroup(engine EngineType, g GroupShape, paths groupPaths) *apis.FieldError {
	if engine == EngineVLLM && g.Pods > 1 && g.Data > 1 && g.Data%g.Pods != 0 {
		return apis.ErrInvalidValue(g.Data, paths.parallelism+".data", fmt.Sprintf(
			"vLLM runs whole data-parallel ranks on each pod of a group: data must be a multiple of the group's %d pods", g.Pods))
	}
	return nil
}
