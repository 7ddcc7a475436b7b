package local

import (
	"fmt"
	"slices"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet/process"
)

// groupLeaderHost is where a local group's workers reach their leader.
const groupLeaderHost = "127.0.0.1"

// roleLaunch returns how a revision role's replicas run: the one engine
// process of a replica (argv and environment), and, per accelerator variant
// ("" for the template's own placement) on which a replica is a serving
// group, the group's processes in rank order. Every process gets the
// engine's parallelism flags; a group's ranks reach their leader on
// 127.0.0.1 at the group's port (process.GroupPortVar, one free port per
// replica).
func roleLaunch(ms *v1alpha1.ModelService, self []string, role string, roleArgs []string,
	lookup func(string) (string, bool)) (argv, env []string, groups map[string][]process.Process, err error) {
	tmpl := &ms.Spec.Template
	placements := []*v1alpha1.AcceleratorVariant{nil}
	names := []string{""}
	if len(tmpl.Accelerators) > 0 {
		placements, names = placements[:0], names[:0]
		for i := range tmpl.Accelerators {
			placements = append(placements, &tmpl.Accelerators[i])
			names = append(names, tmpl.Accelerators[i].Name)
		}
	}
	var single *engine.Group // the one engine's parallelism (nil: none declared)
	for i, v := range placements {
		shape, err := tmpl.Group(role, v)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("ModelService %q: spec.template: %w", ms.Name, err)
		}
		if shape.Declared && single == nil {
			one := shape
			one.Pods, one.AcceleratorsPerPod = 1, one.Accelerators
			single = &engine.Group{Shape: one}
		}
		if !shape.Grouped() {
			continue
		}
		procs := make([]process.Process, 0, shape.Pods)
		for rank := range shape.Pods {
			g := &engine.Group{Shape: shape, Rank: rank, LeaderAddress: groupLeaderHost, Port: process.GroupPortVar}
			a, e, err := engineCommand(ms, self, role, roleArgs, lookup, g)
			if err != nil {
				return nil, nil, nil, err
			}
			procs = append(procs, process.Process{Argv: a, Env: e})
		}
		if groups == nil {
			groups = map[string][]process.Process{}
		}
		groups[names[i]] = procs
	}
	argv, env, err = engineCommand(ms, self, role, roleArgs, lookup, single)
	if err != nil {
		return nil, nil, nil, err
	}
	return argv, env, groups, nil
}

// GroupsStatus is the serving groups of a revision role in
// /kvasir/replicas, for a role whose replicas are groups of several
// processes on some placement.
type GroupsStatus struct {
	// PodsPerGroup is the processes (pods, on Kubernetes) of one group
	// on the template's own placement; 0 with accelerator variants.
	PodsPerGroup int `json:"podsPerGroup,omitempty"`
	// PodsPerVariant is the same per accelerator variant.
	PodsPerVariant map[string]int `json:"podsPerVariant,omitempty"`
	// Desired groups, and Ready groups: every process up and the leader
	// ready (its workers joined).
	Desired int `json:"desired"`
	Ready   int `json:"ready"`
	// NotReady says, per group that runs and is not ready (by replica
	// name), why: the leader engine's reason (the simulator's "waiting for
	// 1 of 1 workers to connect"), a process that exited, or stopping.
	NotReady map[string]string `json:"notReady,omitempty"`
}

// groupsStatus summarises the groups of a role whose variants vs (its
// placement variants, with Pods) include one of several processes; nil
// when none does.
func groupsStatus(vs []autoscaler.Variant, desired, ready int, infos []process.ReplicaInfo) *GroupsStatus {
	if !slices.ContainsFunc(vs, func(v autoscaler.Variant) bool { return v.Pods > 1 }) {
		return nil
	}
	st := &GroupsStatus{Desired: desired, Ready: ready}
	for _, v := range vs {
		if v.Name == "" {
			st.PodsPerGroup = max(v.Pods, 1)
			continue
		}
		if st.PodsPerVariant == nil {
			st.PodsPerVariant = map[string]int{}
		}
		st.PodsPerVariant[v.Name] = max(v.Pods, 1)
	}
	for _, info := range infos {
		if info.Group == nil || info.Group.NotReady == "" {
			continue
		}
		if st.NotReady == nil {
			st.NotReady = map[string]string{}
		}
		st.NotReady[info.Name] = info.Group.NotReady
	}
	return st
}
