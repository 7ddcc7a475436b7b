package resources

import (
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

func revision(mutate func(*v1alpha1.ModelRevision)) *v1alpha1.ModelRevision {
	r := &v1alpha1.ModelRevision{
		ObjectMeta: metav1.ObjectMeta{Name: "llama-00002", Namespace: "ns", UID: "uid-1",
			Labels: map[string]string{v1alpha1.LabelService: "llama"}},
	}
	r.Spec.Model = "llama-3-8b"
	r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Port: 8000, Args: []string{"--max-model-len=8192"}}
	r.Spec.TimeoutSeconds = 600
	r.Spec.ContainerConcurrency = 4
	if mutate != nil {
		mutate(r)
	}
	return r
}

var cfg = Config{QueueProxyImage: "ko://qp", SimulatorImage: "ko://sim"}

func container(d interface{ GetName() string }, cs []corev1.Container, name string) corev1.Container {
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	panic("no container " + name + " in " + d.GetName())
}

func TestMakeDeploymentVLLM(t *testing.T) {
	r := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}}
	})
	d, err := MakeDeployment(r, RoleUnified, nil, 2, cfg)
	require.NoError(t, err)
	require.Equal(t, "llama-00002-deployment", d.Name)
	require.Equal(t, int32(2), *d.Spec.Replicas)
	require.Equal(t, "llama-00002", d.OwnerReferences[0].Name)
	require.True(t, *d.OwnerReferences[0].Controller)
	require.Equal(t, map[string]string{v1alpha1.LabelRevision: "llama-00002", v1alpha1.LabelRole: "unified"}, d.Spec.Selector.MatchLabels)
	require.Equal(t, "llama", d.Spec.Template.Labels[v1alpha1.LabelService])
	require.Equal(t, int64(630), *d.Spec.Template.Spec.TerminationGracePeriodSeconds, "timeout + drain grace")

	spec := d.Spec.Template.Spec
	engine := container(d, spec.Containers, "engine")
	require.Equal(t, DefaultVLLMImage, engine.Image)
	require.Equal(t, []string{"--model", "llama-3-8b", "--max-model-len=8192", "--port", "8000", "--served-model-name", "llama-3-8b"}, engine.Args)
	require.Equal(t, "1", engine.Resources.Limits.Name("nvidia.com/gpu", resource.DecimalSI).String())
	require.Equal(t, "/kvasir/wait-for-drain", engine.Lifecycle.PreStop.HTTPGet.Path, "the engine stops after the queue-proxy drained")

	qp := container(d, spec.Containers, "queue-proxy")
	require.Equal(t, "ko://qp", qp.Image)
	require.Contains(t, qp.Args, "--container-concurrency")
	require.Contains(t, qp.Args, "http://127.0.0.1:8000")
	require.Equal(t, "/kvasir/ready", qp.ReadinessProbe.HTTPGet.Path, "readiness goes through the queue-proxy")
}

func TestMakeDeploymentRolesAndVariants(t *testing.T) {
	r := revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
		r.Spec.Roles = &v1alpha1.RolesSpec{Prefill: &v1alpha1.RoleSpec{Args: []string{"--x=1"}}, Decode: &v1alpha1.RoleSpec{}}
		r.Spec.Accelerators = []v1alpha1.AcceleratorVariant{
			{Name: "h100", Cost: 3, NodeSelector: map[string]string{"gpu": "h100"},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}}},
			{Name: "ascend", Cost: 2, NodeSelector: map[string]string{"npu": "910b"},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{"huawei.com/ascend-910b": resource.MustParse("1")}}},
		}
	})
	require.Equal(t, []string{RolePrefill, RoleDecode}, Roles(r))
	vs := Variants(r)
	require.Len(t, vs, 2)
	require.Equal(t, "ascend", vs[0].Name, "cheapest first")
	d, err := MakeDeployment(r, RolePrefill, vs[0], 1, cfg)
	require.NoError(t, err)
	require.Equal(t, "llama-00002-prefill-ascend", d.Name)
	engine := container(d, d.Spec.Template.Spec.Containers, "engine")
	require.Equal(t, "ko://sim", engine.Image)
	require.Equal(t, []string{"--host", "0.0.0.0", "--port", "8000", "--model", "llama-3-8b", "--role=prefill", "--x=1"}, engine.Args)
	require.Equal(t, map[string]string{"npu": "910b"}, d.Spec.Template.Spec.NodeSelector)
	require.Contains(t, engine.Resources.Limits, corev1.ResourceName("huawei.com/ascend-910b"))
	require.Equal(t, "ascend", d.Spec.Template.Labels[v1alpha1.LabelVariant])

	h100, err := MakeDeployment(r, RolePrefill, vs[1], 0, cfg)
	require.NoError(t, err)
	require.Equal(t, "llama-00002-prefill-h100", h100.Name)
	require.Equal(t, map[string]string{"gpu": "h100"}, h100.Spec.Template.Spec.NodeSelector)
	require.NotEqual(t, d.Spec.Selector.MatchLabels, h100.Spec.Selector.MatchLabels, "variants' Deployments must not share pods")
	for _, dep := range []*appsv1.Deployment{d, h100} {
		for k, v := range Selector(r, RolePrefill) {
			require.Equal(t, v, dep.Spec.Template.Labels[k], "the role's Service selects every variant's pods")
		}
	}
	require.Equal(t, "llama-00002-h100", DeploymentName(r, RoleUnified, "h100"))
	require.Equal(t, "llama-00002-deployment", DeploymentName(r, RoleUnified, ""))

	svc := MakeService(r, RoleDecode)
	require.Equal(t, "llama-00002-decode", svc.Name)
	require.Equal(t, Selector(r, RoleDecode), svc.Spec.Selector)
	require.Equal(t, int32(QueueProxyPort), svc.Spec.Ports[0].TargetPort.IntVal)
}

func TestMakeDeploymentErrorsNameTheField(t *testing.T) {
	_, err := MakeDeployment(revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 8000, Command: []string{"serve"}}
	}), RoleUnified, nil, 1, cfg)
	require.ErrorContains(t, err, "spec.engine.image")
}
