package resources

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"
	lwsv1 "sigs.k8s.io/lws/api/leaderworkerset/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

func sizes(tensor, pipeline, data int32) *v1alpha1.ParallelismSpec {
	return &v1alpha1.ParallelismSpec{Tensor: &tensor, Pipeline: &pipeline, Data: &data}
}

// Serving groups' LeaderWorkerSets: a vLLM tensor 8 × pipeline 2 replica
// on 8-GPU nodes (2 pods of 8 GPUs), and a simulator group of 2 on an
// accelerator variant.
func TestMakeLeaderWorkerSet(t *testing.T) {
	gpus := func(n string) corev1.ResourceRequirements {
		return corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse(n)}}
	}
	for name, tc := range map[string]struct {
		rev         *v1alpha1.ModelRevision
		role        string
		variant     int // index in Variants, -1: none
		wantName    string
		wantGPUs    string
		leaderFlags []string // in the leader's command line
		workerFlags []string // in the worker's command line
	}{
		"vllm tp8 pp2 on 8-GPU nodes": {
			rev: revision(func(r *v1alpha1.ModelRevision) {
				r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(8, 2, 1), ptr.To[int32](8)
				r.Spec.Resources = gpus("8")
			}),
			role: fleet.RoleUnified, variant: -1, wantName: "llama-00002-group", wantGPUs: "8",
			leaderFlags: []string{"ray start --head", "--distributed-executor-backend ray", "--tensor-parallel-size 8", "--pipeline-parallel-size 2"},
			workerFlags: []string{"ray start --address=$(LWS_LEADER_ADDRESS):29550 --block"},
		},
		"sim group of 2, decode on a variant": {
			rev: revision(func(r *v1alpha1.ModelRevision) {
				r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
				r.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{},
					Decode: &v1alpha1.RoleSpec{Parallelism: sizes(2, 1, 1), GroupSize: ptr.To[int32](2)}}
				r.Spec.Accelerators = []v1alpha1.AcceleratorVariant{{Name: "h100", Cost: 1,
					NodeSelector: map[string]string{"gpu": "h100"}, Resources: gpus("1")}}
			}),
			role: fleet.RoleDecode, variant: 0, wantName: "llama-00002-decode-h100-group", wantGPUs: "1",
			leaderFlags: []string{"--group-size 2 --rank 0 --leader-address $(LWS_LEADER_ADDRESS):29550", "--role=decode", "--kv-events-endpoint"},
			workerFlags: []string{"--group-size 2 --rank $(LWS_WORKER_INDEX) --leader-address $(LWS_LEADER_ADDRESS):29550"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			var v *v1alpha1.AcceleratorVariant
			if tc.variant >= 0 {
				v = Variants(tc.rev)[tc.variant]
			}
			set, err := MakeLeaderWorkerSet(tc.rev, tc.role, v, 3, cfg)
			require.NoError(t, err)
			require.Equal(t, tc.wantName, set.Name)
			require.Equal(t, "LeaderWorkerSet", set.Kind)
			require.Equal(t, "leaderworkerset.x-k8s.io/v1", set.APIVersion)
			require.Equal(t, "llama-00002", set.OwnerReferences[0].Name)
			require.True(t, *set.OwnerReferences[0].Controller)
			require.Equal(t, int32(3), *set.Spec.Replicas, "groups, scaled later through the scale subresource")
			tmpl := set.Spec.LeaderWorkerTemplate
			require.Equal(t, int32(2), *tmpl.Size)
			require.Equal(t, lwsv1.RecreateGroupOnPodRestart, tmpl.RestartPolicy)
			require.Equal(t, lwsv1.LeaderCreatedStartupPolicy, set.Spec.StartupPolicy)
			require.Empty(t, set.Annotations, "no topology key: no exclusive topology")

			leader, worker := tmpl.LeaderTemplate, tmpl.WorkerTemplate
			require.NotNil(t, leader)
			service := labels.SelectorFromSet(Selector(tc.rev, tc.role))
			require.True(t, service.Matches(labels.Set(leader.Labels)), "the role's Service selects the leader")
			require.False(t, service.Matches(labels.Set(worker.Labels)), "workers are never endpoints")
			require.NotContains(t, worker.Labels, v1alpha1.LabelRole)
			require.Equal(t, fleet.RoleLabel(tc.role), worker.Labels[LabelGroupWorker])
			require.Equal(t, tc.rev.Name, worker.Labels[v1alpha1.LabelRevision], "the revision's NetworkPolicy covers workers")

			require.Len(t, leader.Spec.Containers, 2)
			container(set, leader.Spec.Containers, "queue-proxy")
			require.Len(t, worker.Spec.Containers, 1, "no queue-proxy on workers")
			le := container(set, leader.Spec.Containers, "engine")
			we := container(set, worker.Spec.Containers, "engine")
			require.NotNil(t, le.Lifecycle, "the leader's engine waits for the queue-proxy to drain")
			require.Nil(t, we.Lifecycle, "a worker has no queue-proxy to wait for")
			for _, c := range []corev1.Container{le, we} {
				require.Equal(t, tc.wantGPUs, c.Resources.Limits.Name("nvidia.com/gpu", resource.DecimalSI).String(), "each pod's share")
				require.Equal(t, restrictedContainer(), withoutUser(c.SecurityContext))
			}
			leaderLine := strings.Join(append(append([]string{}, le.Command...), le.Args...), " ")
			workerLine := strings.Join(append(append([]string{}, we.Command...), we.Args...), " ")
			for _, f := range tc.leaderFlags {
				require.Contains(t, leaderLine, f)
			}
			for _, f := range tc.workerFlags {
				require.Contains(t, workerLine, f)
			}
			require.NotContains(t, workerLine, "--kv-events", "no queue-proxy follows a worker's events")
			for _, spec := range []corev1.PodSpec{leader.Spec, worker.Spec} {
				require.Equal(t, podSecurityContext(), spec.SecurityContext)
				require.False(t, *spec.AutomountServiceAccountToken)
				if v != nil {
					require.Equal(t, v.NodeSelector, spec.NodeSelector)
				} else {
					require.Nil(t, spec.NodeSelector)
				}
				require.Equal(t, int64(630), *spec.TerminationGracePeriodSeconds)
				require.Empty(t, spec.SchedulerName, "the default scheduler without a gang scheduler")
			}

			// The leader is the Deployment's pod, engine args aside.
			d, err := MakeDeployment(tc.rev, tc.role, v, 3, cfg)
			require.NoError(t, err)
			require.Equal(t, d.Spec.Template.Labels, leader.Labels)
			require.Equal(t, d.Spec.Template.Spec.Volumes, leader.Spec.Volumes)
			require.Equal(t, container(d, d.Spec.Template.Spec.Containers, "queue-proxy"), container(set, leader.Spec.Containers, "queue-proxy"))
		})
	}
}

// withoutUser is a container's security context without the engine user,
// which vLLM's and SGLang's containers add.
func withoutUser(sc *corev1.SecurityContext) *corev1.SecurityContext {
	c := sc.DeepCopy()
	c.RunAsUser, c.RunAsGroup, c.ReadOnlyRootFilesystem = nil, nil, nil
	return c
}

// Deep data parallelism: each worker's first data-parallel rank is
// computed from $(LWS_WORKER_INDEX) when it starts.
func TestMakeLeaderWorkerSetDataParallel(t *testing.T) {
	r := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = &v1alpha1.ParallelismSpec{Data: ptr.To[int32](16), Expert: true}, ptr.To[int32](8)
	})
	set, err := MakeLeaderWorkerSet(r, fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	we := set.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.Containers[0]
	require.Equal(t, []string{"/bin/sh", "-c"}, we.Command[:2])
	require.Contains(t, we.Command, LWSWorkerIndexVar)
	require.Contains(t, we.Args, "--headless")
	le := set.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.Containers[0]
	require.Equal(t, []string{"vllm", "serve"}, le.Command)
	require.NotContains(t, le.Args, "--headless")
}

// A role of one pod per replica is a Deployment: the builder refuses it,
// and MakeDeployment's pods stay those of before groups.
func TestMakeLeaderWorkerSetRefusesOnePod(t *testing.T) {
	for name, mutate := range map[string]func(*v1alpha1.ModelRevision){
		"no parallelism": nil,
		"tensor 8 on 8 GPUs": func(r *v1alpha1.ModelRevision) {
			r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(8, 1, 1), ptr.To[int32](8)
		},
		"prefill of one pod": func(r *v1alpha1.ModelRevision) {
			r.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{}}
		},
		"forged size of zero": func(r *v1alpha1.ModelRevision) { r.Spec.GroupSize = ptr.To[int32](0) },
	} {
		t.Run(name, func(t *testing.T) {
			r := revision(mutate)
			_, err := MakeLeaderWorkerSet(r, names0(r), nil, 1, cfg)
			require.Error(t, err)
		})
	}
	r := revision(nil)
	d, err := MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	require.Len(t, d.Spec.Template.Spec.Containers, 2)
	require.NotContains(t, strings.Join(d.Spec.Template.Spec.Containers[0].Args, " "), "parallel")
}

// names0 is a revision's first role.
func names0(r *v1alpha1.ModelRevision) string { return fleet.Roles(r.Spec.Roles != nil)[0] }

// A forged, oversized group (beyond the API's bounds) is refused, not built.
func TestMakeLeaderWorkerSetRefusesHugeGroups(t *testing.T) {
	r := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Parallelism, r.Spec.GroupSize = sizes(1<<20, 1, 1), ptr.To[int32](1<<20)
	})
	_, err := MakeLeaderWorkerSet(r, fleet.RoleUnified, nil, 1, cfg)
	require.Error(t, err)
}

// A topology key is LWS's exclusive topology on the role's set: the
// template's, or the role's own; none without one. Deployments never get
// it.
func TestMakeLeaderWorkerSetTopologyKey(t *testing.T) {
	grouped := func(r *v1alpha1.ModelRevision) {
		r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
		r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(2, 1, 1), ptr.To[int32](1)
	}
	for name, tc := range map[string]struct {
		mutate func(*v1alpha1.ModelRevision)
		role   string
		want   string
	}{
		"none": {mutate: grouped, role: fleet.RoleUnified},
		"the template's": {mutate: func(r *v1alpha1.ModelRevision) {
			grouped(r)
			r.Spec.TopologyKey = "topology.kubernetes.io/zone"
		}, role: fleet.RoleUnified, want: "topology.kubernetes.io/zone"},
		"decode's own": {mutate: func(r *v1alpha1.ModelRevision) {
			grouped(r)
			r.Spec.TopologyKey = "topology.kubernetes.io/zone"
			r.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{TopologyKey: "example.com/rack"}}
		}, role: fleet.RoleDecode, want: "example.com/rack"},
		"prefill keeps the template's": {mutate: func(r *v1alpha1.ModelRevision) {
			grouped(r)
			r.Spec.TopologyKey = "topology.kubernetes.io/zone"
			r.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{}, Decode: &v1alpha1.RoleSpec{TopologyKey: "example.com/rack"}}
		}, role: fleet.RolePrefill, want: "topology.kubernetes.io/zone"},
	} {
		t.Run(name, func(t *testing.T) {
			r := revision(tc.mutate)
			set, err := MakeLeaderWorkerSet(r, tc.role, nil, 1, cfg)
			require.NoError(t, err)
			if tc.want == "" {
				require.Empty(t, set.Annotations)
				return
			}
			require.Equal(t, map[string]string{"leaderworkerset.sigs.k8s.io/exclusive-topology": tc.want}, set.Annotations)
			require.Empty(t, set.Spec.LeaderWorkerTemplate.LeaderTemplate.Annotations, "LWS copies it to the pods itself")
		})
	}
	r := revision(func(r *v1alpha1.ModelRevision) { r.Spec.TopologyKey = "example.com/rack" })
	d, err := MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	require.Empty(t, d.Annotations)
	require.Nil(t, d.Spec.Template.Spec.Affinity, "a one-pod replica is not placed by the key")
}

// With a gang scheduler's name in the Config, both of a group's templates
// name it; a Deployment's pods keep the default scheduler.
func TestMakeLeaderWorkerSetSchedulerName(t *testing.T) {
	r := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(2, 1, 1), ptr.To[int32](1)
	})
	volcano := cfg
	volcano.GroupSchedulerName = VolcanoSchedulerName
	set, err := MakeLeaderWorkerSet(r, fleet.RoleUnified, nil, 1, volcano)
	require.NoError(t, err)
	require.Equal(t, "volcano", set.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.SchedulerName)
	require.Equal(t, "volcano", set.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulerName)
	d, err := MakeDeployment(revision(nil), fleet.RoleUnified, nil, 1, volcano)
	require.NoError(t, err)
	require.Empty(t, d.Spec.Template.Spec.SchedulerName)

	// Not with a topology key: LWS would make the workers only once the
	// leader is scheduled, which Volcano's gang would never allow.
	r.Spec.TopologyKey = "example.com/rack"
	set, err = MakeLeaderWorkerSet(r, fleet.RoleUnified, nil, 1, volcano)
	require.NoError(t, err)
	require.Empty(t, set.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.SchedulerName)
	require.Empty(t, set.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulerName)
}

// Coscheduling: both of a group's templates get the coscheduling
// scheduler and the pod-group gate, only when the cluster serves it, the
// controller names its scheduler and the role has no topology key;
// Volcano's name stays otherwise; a Deployment's pods never get either.
func TestMakeLeaderWorkerSetCoscheduling(t *testing.T) {
	grouped := func(mutate func(*v1alpha1.ModelRevision)) *v1alpha1.ModelRevision {
		return revision(func(r *v1alpha1.ModelRevision) {
			r.Spec.Parallelism, r.Spec.AcceleratorsPerNode = sizes(2, 1, 1), ptr.To[int32](1)
			if mutate != nil {
				mutate(r)
			}
		})
	}
	with := func(mutate func(*Config)) Config {
		c := cfg
		mutate(&c)
		return c
	}
	gate := []corev1.PodSchedulingGate{{Name: "serving.kvasir.dev/pod-group"}}
	for name, tc := range map[string]struct {
		rev       *v1alpha1.ModelRevision
		cfg       Config
		scheduler string
		gated     bool
	}{
		"coscheduling": {rev: grouped(nil), scheduler: "scheduler-plugins-scheduler", gated: true,
			cfg: with(func(c *Config) { c.Coscheduling, c.CoschedulingSchedulerName = true, DefaultCoschedulingSchedulerName })},
		"coscheduling under another name": {rev: grouped(nil), scheduler: "gang", gated: true,
			cfg: with(func(c *Config) { c.Coscheduling, c.CoschedulingSchedulerName = true, "gang" })},
		"not served": {rev: grouped(nil), scheduler: "",
			cfg: with(func(c *Config) { c.CoschedulingSchedulerName = DefaultCoschedulingSchedulerName })},
		"turned off (no scheduler name)": {rev: grouped(nil), scheduler: "",
			cfg: with(func(c *Config) { c.Coscheduling = true })},
		"volcano": {rev: grouped(nil), scheduler: "volcano",
			cfg: with(func(c *Config) { c.GroupSchedulerName, c.CoschedulingSchedulerName = VolcanoSchedulerName, "x" })},
		"topology key": {rev: grouped(func(r *v1alpha1.ModelRevision) { r.Spec.TopologyKey = "example.com/rack" }), scheduler: "",
			cfg: with(func(c *Config) { c.Coscheduling, c.CoschedulingSchedulerName = true, DefaultCoschedulingSchedulerName })},
	} {
		t.Run(name, func(t *testing.T) {
			set, err := MakeLeaderWorkerSet(tc.rev, fleet.RoleUnified, nil, 1, tc.cfg)
			require.NoError(t, err)
			require.Equal(t, tc.gated, UsesCoscheduling(tc.rev, fleet.RoleUnified, tc.cfg))
			tmpl := set.Spec.LeaderWorkerTemplate
			for _, spec := range []corev1.PodSpec{tmpl.LeaderTemplate.Spec, tmpl.WorkerTemplate.Spec} {
				require.Equal(t, tc.scheduler, spec.SchedulerName)
				if tc.gated {
					require.Equal(t, gate, spec.SchedulingGates)
				} else {
					require.Empty(t, spec.SchedulingGates)
				}
			}
			require.NotContains(t, tmpl.LeaderTemplate.Labels, CoschedulingPodGroupLabel, "one template for every group")
			d, err := MakeDeployment(revision(nil), fleet.RoleUnified, nil, 1, tc.cfg)
			require.NoError(t, err)
			require.Empty(t, d.Spec.Template.Spec.SchedulerName)
			require.Empty(t, d.Spec.Template.Spec.SchedulingGates)
		})
	}
	// The two templates' gates are separate slices.
	set, err := MakeLeaderWorkerSet(grouped(nil), fleet.RoleUnified, nil, 1,
		with(func(c *Config) { c.Coscheduling, c.CoschedulingSchedulerName = true, "gang" }))
	require.NoError(t, err)
	set.Spec.LeaderWorkerTemplate.LeaderTemplate.Spec.SchedulingGates[0].Name = "changed"
	require.Equal(t, gate, set.Spec.LeaderWorkerTemplate.WorkerTemplate.Spec.SchedulingGates)
}
