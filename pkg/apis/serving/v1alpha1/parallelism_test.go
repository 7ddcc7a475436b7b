package v1alpha1

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"knative.dev/pkg/apis"
	"sigs.k8s.io/yaml"
)

func par(t, p, d int32, expert bool) *ParallelismSpec {
	return &ParallelismSpec{Tensor: &t, Pipeline: &p, Data: &d, Expert: expert}
}

func TestDeriveGroup(t *testing.T) {
	tests := []struct {
		name       string
		p          *ParallelismSpec
		perNode    *int32
		groupSize  *int32
		want       GroupShape
		wantErr    string // "" = valid
		wantFields []string
	}{{
		name: "no parallelism: one accelerator, one pod, undeclared",
		want: GroupShape{Tensor: 1, Pipeline: 1, Data: 1, Accelerators: 1, Pods: 1, AcceleratorsPerPod: 1},
	}, {
		name: "empty parallelism: the defaults, declared",
		p:    &ParallelismSpec{},
		want: GroupShape{Tensor: 1, Pipeline: 1, Data: 1, Declared: true, Accelerators: 1, Pods: 1, AcceleratorsPerPod: 1},
	}, {
		name: "tensor 8 without acceleratorsPerNode: one pod of 8",
		p:    &ParallelismSpec{Tensor: ptr(int32(8))},
		want: GroupShape{Tensor: 8, Pipeline: 1, Data: 1, Declared: true, Accelerators: 8, Pods: 1, AcceleratorsPerPod: 8},
	}, {
		name:    "tensor 8 x pipeline 2 on 8-accelerator nodes: 2 pods (the issue's example)",
		p:       par(8, 2, 1, false),
		perNode: ptr(int32(8)),
		want:    GroupShape{Tensor: 8, Pipeline: 2, Data: 1, Declared: true, Accelerators: 16, Pods: 2, AcceleratorsPerPod: 8},
	}, {
		name:    "data 16 with expert parallelism on 8-accelerator nodes: 2 pods",
		p:       par(1, 1, 16, true),
		perNode: ptr(int32(8)),
		want:    GroupShape{Tensor: 1, Pipeline: 1, Data: 16, Expert: true, Declared: true, Accelerators: 16, Pods: 2, AcceleratorsPerPod: 8},
	}, {
		name:    "tensor 16 on 8-accelerator nodes: 2 pods",
		p:       par(16, 1, 1, false),
		perNode: ptr(int32(8)),
		want:    GroupShape{Tensor: 16, Pipeline: 1, Data: 1, Declared: true, Accelerators: 16, Pods: 2, AcceleratorsPerPod: 8},
	}, {
		name:    "fits one node: one pod",
		p:       par(4, 1, 2, false),
		perNode: ptr(int32(8)),
		want:    GroupShape{Tensor: 4, Pipeline: 1, Data: 2, Declared: true, Accelerators: 8, Pods: 1, AcceleratorsPerPod: 8},
	}, {
		name:    "10 on 8-accelerator nodes: 2 pods of 5",
		p:       par(10, 1, 1, false),
		perNode: ptr(int32(8)),
		want:    GroupShape{Tensor: 10, Pipeline: 1, Data: 1, Declared: true, Accelerators: 10, Pods: 2, AcceleratorsPerPod: 5},
	}, {
		name:      "explicit group size overrides the derived one",
		p:         par(8, 2, 1, false),
		perNode:   ptr(int32(8)),
		groupSize: ptr(int32(4)),
		want:      GroupShape{Tensor: 8, Pipeline: 2, Data: 1, Declared: true, Accelerators: 16, Pods: 4, AcceleratorsPerPod: 4},
	}, {
		name:      "explicit group size without acceleratorsPerNode",
		p:         par(2, 1, 1, false),
		groupSize: ptr(int32(2)),
		want:      GroupShape{Tensor: 2, Pipeline: 1, Data: 1, Declared: true, Accelerators: 2, Pods: 2, AcceleratorsPerPod: 1},
	}, {
		name:      "group size of 1 keeps a big replica in one pod",
		p:         par(8, 1, 1, false),
		groupSize: ptr(int32(1)),
		want:      GroupShape{Tensor: 8, Pipeline: 1, Data: 1, Declared: true, Accelerators: 8, Pods: 1, AcceleratorsPerPod: 8},
	}, {
		name:    "acceleratorsPerNode without parallelism: one pod",
		perNode: ptr(int32(8)),
		want:    GroupShape{Tensor: 1, Pipeline: 1, Data: 1, Accelerators: 1, Pods: 1, AcceleratorsPerPod: 1},
	}, {
		name:       "12 on 8-accelerator nodes split 2 x 6",
		p:          par(3, 1, 4, false),
		perNode:    ptr(int32(8)),
		want:       GroupShape{Tensor: 3, Pipeline: 1, Data: 4, Declared: true, Accelerators: 12, Pods: 2, AcceleratorsPerPod: 6},
		wantFields: nil,
	}, {
		name:       "9 accelerators do not split over 2 pods of 8-accelerator nodes",
		p:          par(9, 1, 1, false),
		perNode:    ptr(int32(8)),
		wantErr:    "does not split evenly over the 2 pods",
		wantFields: []string{"acceleratorsPerNode", "parallelism"},
	}, {
		name:       "group size not dividing the accelerators",
		p:          par(8, 1, 1, false),
		groupSize:  ptr(int32(3)),
		wantErr:    "must divide tensor × pipeline × data (8 accelerators)",
		wantFields: []string{"groupSize"},
	}, {
		name:       "more pods than accelerators",
		groupSize:  ptr(int32(2)),
		wantErr:    "must divide",
		wantFields: []string{"groupSize"},
	}, {
		name:       "explicit group whose pods do not fit the nodes",
		p:          par(16, 1, 1, false),
		perNode:    ptr(int32(4)),
		groupSize:  ptr(int32(2)),
		wantErr:    "2 pods of 8 accelerators each do not fit nodes of 4",
		wantFields: []string{"acceleratorsPerNode", "groupSize"},
	}, {
		name:       "zero tensor",
		p:          &ParallelismSpec{Tensor: ptr(int32(0))},
		wantErr:    "expected 1 <= 0 <= 1024",
		wantFields: []string{"parallelism.tensor"},
	}, {
		name:       "negative data",
		p:          &ParallelismSpec{Data: ptr(int32(-4))},
		wantErr:    "expected 1 <= -4 <= 1024",
		wantFields: []string{"parallelism.data"},
	}, {
		name:       "huge pipeline",
		p:          &ParallelismSpec{Pipeline: ptr(int32(math.MaxInt32))},
		wantFields: []string{"parallelism.pipeline"},
	}, {
		name:       "product beyond the bound, without int32 overflow",
		p:          par(1024, 1024, 1024, false),
		wantErr:    "1073741824 accelerators per replica, more than 1024",
		wantFields: []string{"parallelism.data", "parallelism.pipeline", "parallelism.tensor"},
	}, {
		name:       "expert parallelism over one rank",
		p:          par(1, 4, 1, true),
		wantErr:    "needs tensor × data > 1",
		wantFields: []string{"parallelism.expert"},
	}, {
		name:       "zero acceleratorsPerNode",
		p:          par(2, 1, 1, false),
		perNode:    ptr(int32(0)),
		wantFields: []string{"acceleratorsPerNode"},
	}, {
		name:       "negative group size",
		groupSize:  ptr(int32(-1)),
		wantFields: []string{"groupSize"},
	}, {
		name:       "huge group size",
		groupSize:  ptr(int32(MaxParallelSize + 1)),
		wantFields: []string{"groupSize"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before *ParallelismSpec
			if tc.p != nil {
				before = tc.p.DeepCopy()
			}
			g, err := DeriveGroup(tc.p, tc.perNode, tc.groupSize)
			assert.Equal(t, before, tc.p, "DeriveGroup must not change its input")
			if tc.wantErr == "" && tc.wantFields == nil {
				require.NoError(t, err)
				assert.Equal(t, tc.want, g)
				assert.Equal(t, g.Pods > 1, g.Grouped())
				assert.Equal(t, g.Accelerators, g.Pods*g.AcceleratorsPerPod)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			if tc.wantFields != nil {
				var fe *apis.FieldError
				require.ErrorAs(t, err, &fe)
				assert.ElementsMatch(t, tc.wantFields, errorPaths(fe), "error: %v", err)
			}
		})
	}
}

// A valid DeriveGroup answer never comes with a nil error of a non-nil
// interface (a typed nil *apis.FieldError).
func TestDeriveGroupNilError(t *testing.T) {
	_, err := DeriveGroup(nil, nil, nil)
	assert.True(t, err == nil)
}

// Every size DeriveGroup accepts splits evenly and fits: exhaustively over
// small inputs, nothing panics and the answer is consistent.
func TestDeriveGroupExhaustive(t *testing.T) {
	for tp := int32(-1); tp <= 9; tp++ {
		for d := int32(0); d <= 9; d++ {
			for perNode := int32(-1); perNode <= 9; perNode++ {
				for size := int32(-1); size <= 9; size++ {
					p := &ParallelismSpec{Tensor: ptr(tp), Data: ptr(d), Expert: tp*d > 1}
					var pn, gs *int32
					if perNode >= 0 {
						pn = ptr(perNode)
					}
					if size >= 0 {
						gs = ptr(size)
					}
					g, err := DeriveGroup(p, pn, gs)
					if err != nil {
						continue
					}
					require.Equal(t, g.Accelerators, g.Pods*g.AcceleratorsPerPod, "%d %d %v %v", tp, d, pn, gs)
					require.Equal(t, tp*d, g.Accelerators)
					if pn != nil {
						require.LessOrEqual(t, g.AcceleratorsPerPod, *pn)
					}
					if gs != nil {
						require.Equal(t, *gs, g.Pods)
					}
				}
			}
		}
	}
}

func TestParallelismDefaults(t *testing.T) {
	tmpl := RevisionTemplate{}
	tmpl.SetDefaults()
	assert.Nil(t, tmpl.Parallelism, "never added: templates from before keep equal to their revisions")

	tmpl = RevisionTemplate{Parallelism: &ParallelismSpec{Tensor: ptr(int32(8))},
		Roles: &RolesSpec{Prefill: &RoleSpec{}, Decode: &RoleSpec{Parallelism: &ParallelismSpec{Data: ptr(int32(16)), Expert: true}}}}
	tmpl.SetDefaults()
	assert.Equal(t, par(8, 1, 1, false), tmpl.Parallelism)
	assert.Nil(t, tmpl.Roles.Prefill.Parallelism)
	assert.Equal(t, par(1, 1, 16, true), tmpl.Roles.Decode.Parallelism)
	again := tmpl.DeepCopy()
	again.SetDefaults()
	assert.Equal(t, &tmpl, again, "idempotent")
	assert.Nil(t, tmpl.GroupSize, "the group size stays derived")
}

func TestRoleGroups(t *testing.T) {
	tmpl := RevisionTemplate{
		Parallelism:         par(8, 2, 1, false),
		AcceleratorsPerNode: ptr(int32(8)),
		GroupSize:           ptr(int32(4)),
		Accelerators: []AcceleratorVariant{{Name: "h100"},
			{Name: "l40s", AcceleratorsPerNode: ptr(int32(4))}},
	}
	g, err := tmpl.Group("", nil)
	require.NoError(t, err)
	assert.Equal(t, int32(4), g.Pods, "the template's group size")

	tmpl.Roles = &RolesSpec{
		Prefill: &RoleSpec{Parallelism: par(8, 1, 1, false)},
		Decode:  &RoleSpec{GroupSize: ptr(int32(2))},
	}
	g, err = tmpl.Group("prefill", nil)
	require.NoError(t, err)
	assert.Equal(t, GroupShape{Tensor: 8, Pipeline: 1, Data: 1, Declared: true, Accelerators: 8, Pods: 1, AcceleratorsPerPod: 8}, g,
		"a role's parallelism replaces the template's group size too")
	g, err = tmpl.Group("prefill", &tmpl.Accelerators[1])
	require.NoError(t, err)
	assert.Equal(t, int32(2), g.Pods, "smaller nodes, more pods")
	g, err = tmpl.Group("prefill", &tmpl.Accelerators[0])
	require.NoError(t, err)
	assert.Equal(t, int32(1), g.Pods, "a variant without its own acceleratorsPerNode has the template's")
	g, err = tmpl.Group("decode", nil)
	require.NoError(t, err)
	assert.Equal(t, int32(2), g.Pods, "the role's group size, the template's parallelism")
	assert.Equal(t, int32(16), g.Accelerators)
	assert.Same(t, tmpl.Parallelism, tmpl.RoleParallelism("decode"))
	assert.Same(t, tmpl.Roles.Prefill.Parallelism, tmpl.RoleParallelism("prefill"))
}

// issueRoles is the issue's example: a prefill group of tensor 8, a decode
// group of data 16 with expert parallelism across 2 nodes.
const issueRoles = `
apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: deepseek, namespace: default}
spec:
  model: deepseek-ai/DeepSeek-R1
  template:
    engine: {type: vllm}
    acceleratorsPerNode: 8
    resources: {limits: {nvidia.com/gpu: "8"}}
    roles:
      prefill: {parallelism: {tensor: 8}}
      decode: {parallelism: {data: 16, expert: true}}
`

func TestIssueExample(t *testing.T) {
	ms := &ModelService{}
	require.NoError(t, yaml.UnmarshalStrict([]byte(issueRoles), ms))
	ms.SetDefaults()
	require.Nil(t, ms.Validate())
	prefill, err := ms.Spec.Template.Group("prefill", nil)
	require.NoError(t, err)
	decode, err := ms.Spec.Template.Group("decode", nil)
	require.NoError(t, err)
	assert.Equal(t, int32(1), prefill.Pods)
	assert.Equal(t, GroupShape{Tensor: 1, Pipeline: 1, Data: 16, Expert: true, Declared: true, Accelerators: 16, Pods: 2, AcceleratorsPerPod: 8}, decode)
}

func TestValidateGroups(t *testing.T) {
	base := func() *ModelService {
		ms := &ModelService{}
		require.NoError(t, yaml.UnmarshalStrict([]byte(issueRoles), ms))
		return ms
	}
	tests := []struct {
		name   string
		mutate func(*RevisionTemplate)
		paths  []string // nil = valid
		msg    string
	}{
		{name: "the issue's example", mutate: func(*RevisionTemplate) {}},
		{name: "unified: tensor 8 x pipeline 2", mutate: func(t *RevisionTemplate) {
			t.Roles, t.Parallelism = nil, par(8, 2, 1, false)
		}},
		{name: "zero tensor in a role", mutate: func(t *RevisionTemplate) {
			t.Roles.Prefill.Parallelism.Tensor = ptr(int32(0))
		}, paths: []string{"spec.template.roles.prefill.parallelism.tensor"}},
		{name: "expert over one rank in the template", mutate: func(t *RevisionTemplate) {
			t.Parallelism = par(1, 2, 1, true)
		}, paths: []string{"spec.template.parallelism.expert"}, msg: "tensor × data > 1"},
		{name: "zero acceleratorsPerNode", mutate: func(t *RevisionTemplate) { t.AcceleratorsPerNode = ptr(int32(0)) },
			paths: []string{"spec.template.acceleratorsPerNode"}},
		{name: "variant's acceleratorsPerNode out of bounds", mutate: func(t *RevisionTemplate) {
			t.Accelerators = []AcceleratorVariant{{Name: "a", AcceleratorsPerNode: ptr(int32(2000))}}
		}, paths: []string{"spec.template.accelerators[0].acceleratorsPerNode"}},
		{name: "role group size out of bounds", mutate: func(t *RevisionTemplate) {
			t.Roles.Decode.GroupSize = ptr(int32(-3))
		}, paths: []string{"spec.template.roles.decode.groupSize"}},
		{name: "role group size not dividing", mutate: func(t *RevisionTemplate) {
			t.Roles.Decode.GroupSize = ptr(int32(3))
		}, paths: []string{"spec.template.roles.decode.groupSize"}, msg: "must divide"},
		{name: "template group size not dividing, shared by both roles: one error", mutate: func(t *RevisionTemplate) {
			t.Roles.Prefill.Parallelism, t.Roles.Decode.Parallelism = nil, nil
			t.Parallelism, t.GroupSize = par(8, 1, 1, false), ptr(int32(3))
		}, paths: []string{"spec.template.groupSize"}},
		{name: "uneven split on a variant's nodes", mutate: func(t *RevisionTemplate) {
			t.Accelerators = []AcceleratorVariant{{Name: "small", AcceleratorsPerNode: ptr(int32(3))}}
		}, paths: []string{"spec.template.accelerators[0].acceleratorsPerNode", "spec.template.roles.decode.parallelism",
			"spec.template.accelerators[0].acceleratorsPerNode", "spec.template.roles.prefill.parallelism"},
			msg: "(8 accelerators) does not split evenly over the 3 pods that nodes of 3 need"},
		{name: "vLLM: data not a multiple of the pods", mutate: func(t *RevisionTemplate) {
			t.Roles.Decode.Parallelism = par(8, 1, 2, true)
			t.Roles.Decode.GroupSize = ptr(int32(4))
		}, paths: []string{"spec.template.roles.decode.parallelism.data"}, msg: "vLLM runs whole data-parallel ranks"},
		{name: "SGLang: data-parallel attention ranks may span pods", mutate: func(t *RevisionTemplate) {
			t.Engine.Type = EngineSGLang
			t.Roles.Decode.Parallelism = par(8, 1, 2, true)
			t.Roles.Decode.GroupSize = ptr(int32(4))
		}},
		{name: "group size without parallelism", mutate: func(t *RevisionTemplate) {
			t.Roles, t.GroupSize = nil, ptr(int32(2))
		}, paths: []string{"spec.template.groupSize"}, msg: "must divide"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ms := base()
			tc.mutate(&ms.Spec.Template)
			ms.SetDefaults()
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

// The revision of a grouped service validates at spec.* as the service at
// spec.template.*.
func TestModelRevisionValidatesGroups(t *testing.T) {
	r := &ModelRevision{}
	r.Name = "deepseek-00001"
	r.Spec.Engine.Type = EngineVLLM
	r.Spec.Parallelism = par(1, 1, 6, true)
	r.Spec.GroupSize = ptr(int32(4))
	r.SetDefaults()
	err := r.Validate()
	require.NotNil(t, err)
	assert.ElementsMatch(t, []string{"spec.groupSize"}, errorPaths(err), "error: %v", err)
}
