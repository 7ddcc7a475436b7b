package resources

import (
	"testing"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
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
	d, err := MakeDeployment(r, fleet.RoleUnified, nil, 2, cfg)
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
	// pkg/engine's golden files hold every engine's command line; here,
	// that the Deployment carries it.
	require.Equal(t, []string{"vllm", "serve"}, engine.Command)
	require.Equal(t, []string{"llama-3-8b", "--max-model-len=8192", "--host", "127.0.0.1", "--port", "8000", "--served-model-name", "llama-3-8b", "--enable-prefix-caching",
		"--kv-events-config", `{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://127.0.0.1:5557","topic":""}`}, engine.Args)
	require.Equal(t, "1", engine.Resources.Limits.Name("nvidia.com/gpu", resource.DecimalSI).String())
	require.Equal(t, "/kvasir/wait-for-drain", engine.Lifecycle.PreStop.HTTPGet.Path, "the engine stops after the queue-proxy drained")

	qp := container(d, spec.Containers, "queue-proxy")
	require.Equal(t, "ko://qp", qp.Image)
	require.Contains(t, qp.Args, "--container-concurrency")
	require.Contains(t, qp.Args, "http://127.0.0.1:8000")
	require.Equal(t, "/kvasir/ready", qp.ReadinessProbe.HTTPGet.Path, "readiness goes through the queue-proxy")
	// The queue-proxy binds the engine's KV events on the pod's loopback.
	require.Subset(t, qp.Args, []string{"--engine-health-path", "/health", "--kv-events-endpoint", "tcp://127.0.0.1:5557", "--kv-events-bind"})
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
	require.Equal(t, []string{fleet.RolePrefill, fleet.RoleDecode}, names.Roles(r))
	vs := Variants(r)
	require.Len(t, vs, 2)
	require.Equal(t, "ascend", vs[0].Name, "cheapest first")
	d, err := MakeDeployment(r, fleet.RolePrefill, vs[0], 1, cfg)
	require.NoError(t, err)
	require.Equal(t, "llama-00002-prefill-ascend", d.Name)
	engine := container(d, d.Spec.Template.Spec.Containers, "engine")
	require.Equal(t, "ko://sim", engine.Image)
	require.Equal(t, []string{"--x=1", "--host", "127.0.0.1", "--port", "8000", "--model", "llama-3-8b", "--role=prefill",
		"--kv-events-endpoint", "tcp://127.0.0.1:5557"}, engine.Args)
	require.Equal(t, map[string]string{"npu": "910b"}, d.Spec.Template.Spec.NodeSelector)
	require.Contains(t, engine.Resources.Limits, corev1.ResourceName("huawei.com/ascend-910b"))
	require.Equal(t, "ascend", d.Spec.Template.Labels[v1alpha1.LabelVariant])

	h100, err := MakeDeployment(r, fleet.RolePrefill, vs[1], 0, cfg)
	require.NoError(t, err)
	require.Equal(t, "llama-00002-prefill-h100", h100.Name)
	require.Equal(t, map[string]string{"gpu": "h100"}, h100.Spec.Template.Spec.NodeSelector)
	require.NotEqual(t, d.Spec.Selector.MatchLabels, h100.Spec.Selector.MatchLabels, "variants' Deployments must not share pods")
	for _, dep := range []*appsv1.Deployment{d, h100} {
		for k, v := range Selector(r, fleet.RolePrefill) {
			require.Equal(t, v, dep.Spec.Template.Labels[k], "the role's Service selects every variant's pods")
		}
	}
	require.Equal(t, "llama-00002-h100", names.Deployment(r, fleet.RoleUnified, "h100"))
	require.Equal(t, "llama-00002-deployment", names.Deployment(r, fleet.RoleUnified, ""))

	svc := MakeService(r, fleet.RoleDecode)
	require.Equal(t, "llama-00002-decode", svc.Name)
	require.Equal(t, Selector(r, fleet.RoleDecode), svc.Spec.Selector)
	require.Equal(t, int32(names.QueueProxyPort), svc.Spec.Ports[0].TargetPort.IntVal)
}

func TestMakeDeploymentErrorsNameTheField(t *testing.T) {
	_, err := MakeDeployment(revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 8000, Command: []string{"serve"}}
	}), fleet.RoleUnified, nil, 1, cfg)
	require.ErrorContains(t, err, "spec.engine.image")
}

// lastFlag is the value a flag parser keeps for name in args: the last.
func lastFlag(args []string, name string) (string, bool) {
	v, ok := "", false
	for i, a := range args {
		switch {
		case a == name && i+1 < len(args):
			v, ok = args[i+1], true
		case len(a) > len(name) && a[:len(name)+1] == name+"=":
			v, ok = a[len(name)+1:], true
		}
	}
	return v, ok
}

func env(c corev1.Container, name string) (string, bool) {
	v, ok := "", false
	for _, e := range c.Env {
		if e.Name == name {
			v, ok = e.Value, true
		}
	}
	return v, ok
}

// Every engine the platform starts listens on loopback only, where the
// queue-proxy (the engine URL it is given) is its one client, even when
// the template's arguments ask for the wildcard; a custom engine is told
// where through $(HOST) and $(PORT).
func TestEnginesListenOnLoopback(t *testing.T) {
	for _, typ := range []v1alpha1.EngineType{v1alpha1.EngineVLLM, v1alpha1.EngineSGLang, v1alpha1.EngineSim} {
		t.Run(string(typ), func(t *testing.T) {
			r := revision(func(r *v1alpha1.ModelRevision) {
				r.Spec.Engine = v1alpha1.EngineSpec{Type: typ, Port: 9000}
				if typ != v1alpha1.EngineSim { // the simulator's flags are its own; the real engines' last one wins
					r.Spec.Engine.Args = []string{"--host", "0.0.0.0"}
				}
			})
			d, err := MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
			require.NoError(t, err)
			engine := container(d, d.Spec.Template.Spec.Containers, "engine")
			host, ok := lastFlag(engine.Args, "--host")
			require.True(t, ok, "%q", engine.Args)
			require.Equal(t, "127.0.0.1", host, "%q", engine.Args)
			qp := container(d, d.Spec.Template.Spec.Containers, "queue-proxy")
			url, _ := lastFlag(qp.Args, "--engine-url")
			require.Equal(t, "http://127.0.0.1:9000", url)
		})
	}
	t.Run("custom", func(t *testing.T) {
		r := revision(func(r *v1alpha1.ModelRevision) {
			r.Spec.Engine = v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Image: "me/engine", Port: 9000,
				Command: []string{"serve"}, Args: []string{"--bind=$(HOST):$(PORT)"}}
		})
		d, err := MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
		require.NoError(t, err)
		engine := container(d, d.Spec.Template.Spec.Containers, "engine")
		require.Equal(t, []string{"--bind=$(HOST):$(PORT)"}, engine.Args, "Kubernetes expands them from the environment")
		host, _ := env(engine, "HOST")
		port, _ := env(engine, "PORT")
		require.Equal(t, "127.0.0.1", host)
		require.Equal(t, "9000", port)

		// The template's own values are the template's.
		r.Spec.Engine.Env = []corev1.EnvVar{{Name: "PORT", Value: "9000"}}
		d, err = MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
		require.NoError(t, err)
		engine = container(d, d.Spec.Template.Spec.Containers, "engine")
		require.Len(t, engine.Env, 2, "PORT once, and HOST: %v", engine.Env)
	})
}

// Revision pods meet the restricted Pod Security Standard
// (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
// non-root, no privilege escalation, no capabilities, the runtime's
// seccomp profile, only emptyDir volumes; with no service-account token
// mounted. The API server's PodSecurity admission checks the same in
// TestRevisionPodsPassRestrictedAdmission (pkg/reconciler/revision).
func TestRevisionPodsAreRestricted(t *testing.T) {
	for _, typ := range []v1alpha1.EngineType{v1alpha1.EngineVLLM, v1alpha1.EngineSGLang, v1alpha1.EngineSim, v1alpha1.EngineCustom} {
		t.Run(string(typ), func(t *testing.T) {
			r := revision(func(r *v1alpha1.ModelRevision) {
				r.Spec.Engine = v1alpha1.EngineSpec{Type: typ, Port: 8000, Image: "img"}
			})
			d, err := MakeDeployment(r, fleet.RoleUnified, nil, 1, cfg)
			require.NoError(t, err)
			spec := d.Spec.Template.Spec
			require.NotNil(t, spec.AutomountServiceAccountToken)
			require.False(t, *spec.AutomountServiceAccountToken, "no API credentials in revision pods")
			require.True(t, *spec.SecurityContext.RunAsNonRoot)
			require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, spec.SecurityContext.SeccompProfile.Type)
			require.False(t, spec.HostNetwork || spec.HostPID || spec.HostIPC)
			for _, v := range spec.Volumes {
				require.NotNil(t, v.EmptyDir, "volume %s", v.Name)
			}
			for _, c := range spec.Containers {
				sc := c.SecurityContext
				require.NotNil(t, sc, c.Name)
				require.False(t, *sc.AllowPrivilegeEscalation, c.Name)
				require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop, c.Name)
				require.Empty(t, sc.Capabilities.Add, c.Name)
				require.Nil(t, sc.Privileged, c.Name)
				if sc.RunAsUser != nil {
					require.NotZero(t, *sc.RunAsUser, c.Name)
				}
			}
			qp := container(d, spec.Containers, "queue-proxy")
			require.True(t, *qp.SecurityContext.ReadOnlyRootFilesystem, "the queue-proxy writes nothing")
			require.False(t, qp.Resources.Requests.Cpu().IsZero(), "the queue-proxy's CPU is requested")
			require.False(t, qp.Resources.Requests.Memory().IsZero(), "and its memory")
			require.False(t, qp.Resources.Limits.Memory().IsZero(), "and bounded")
			require.True(t, qp.Resources.Requests.Memory().Cmp(*qp.Resources.Limits.Memory()) < 0)

			engine := container(d, spec.Containers, "engine")
			switch typ {
			case v1alpha1.EngineVLLM, v1alpha1.EngineSGLang:
				// Their images declare root: they run as EngineUID, with a
				// writable $HOME (model downloads, caches) and /tmp.
				require.Equal(t, int64(EngineUID), *engine.SecurityContext.RunAsUser)
				require.Equal(t, int64(EngineUID), *engine.SecurityContext.RunAsGroup)
				home, _ := env(engine, "HOME")
				require.Equal(t, EngineHome, home)
				mounts := map[string]string{}
				for _, m := range engine.VolumeMounts {
					mounts[m.MountPath] = m.Name
				}
				require.Contains(t, mounts, EngineHome)
				require.Contains(t, mounts, "/tmp")
				require.Len(t, spec.Volumes, 2)
			case v1alpha1.EngineSim:
				require.True(t, *engine.SecurityContext.ReadOnlyRootFilesystem)
				require.Empty(t, spec.Volumes)
			case v1alpha1.EngineCustom:
				require.Nil(t, engine.SecurityContext.RunAsUser, "a custom image's own (non-root) user")
			}
		})
	}
	// A template's HOME is kept.
	d, err := MakeDeployment(revision(func(r *v1alpha1.ModelRevision) {
		r.Spec.Engine.Env = []corev1.EnvVar{{Name: "HOME", Value: "/models"}}
	}), fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	home, _ := env(container(d, d.Spec.Template.Spec.Containers, "engine"), "HOME")
	require.Equal(t, "/models", home)
}

// A revision whose engines run with LoRA mounts the service's adapters
// ConfigMap into the queue-proxy, which loads and unloads adapters to match.
func TestMakeDeploymentLoRA(t *testing.T) {
	d, err := MakeDeployment(revision(func(r *v1alpha1.ModelRevision) { r.Spec.LoRAAdapters = []string{"sql"} }), fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	spec := d.Spec.Template.Spec
	qp := container(d, spec.Containers, "queue-proxy")
	require.Subset(t, qp.Args, []string{"--lora-adapters-file", "/etc/kvasir/lora/lora-adapters.json",
		"--lora-load-path", "/v1/load_lora_adapter"})
	require.Equal(t, []corev1.VolumeMount{{Name: "lora-adapters", MountPath: LoRAMountPath, ReadOnly: true}}, qp.VolumeMounts)
	var vol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == "lora-adapters" {
			vol = &spec.Volumes[i]
		}
	}
	require.NotNil(t, vol)
	require.Equal(t, "llama-lora-adapters", vol.ConfigMap.Name)
	engine := container(d, spec.Containers, "engine")
	require.Contains(t, engine.Env, corev1.EnvVar{Name: "VLLM_ALLOW_RUNTIME_LORA_UPDATING", Value: "True"})

	// Without adapters: no volume, no flag.
	d, err = MakeDeployment(revision(nil), fleet.RoleUnified, nil, 1, cfg)
	require.NoError(t, err)
	require.NotContains(t, container(d, d.Spec.Template.Spec.Containers, "queue-proxy").Args, "--lora-adapters-file")

	ms := &v1alpha1.ModelService{ObjectMeta: metav1.ObjectMeta{Name: "llama", Namespace: "ns", UID: "u"}}
	ms.Spec.LoRAAdapters = []string{"a", "b"}
	cm, err := MakeLoRAConfigMap(ms)
	require.NoError(t, err)
	require.Equal(t, "llama-lora-adapters", cm.Name)
	require.JSONEq(t, `{"loraAdapters":["a","b"]}`, cm.Data[LoRAConfigMapKey])
}

// The queue-proxy's own command line: where it listens, its engine, the
// revision's concurrency and timeout, the pod's name, then the engine's
// arguments.
func TestQueueProxyContainerArgs(t *testing.T) {
	r := revision(func(r *v1alpha1.ModelRevision) { r.Spec.TimeoutSeconds = 90 })
	qp := queueProxyContainer(r, "img")
	require.Equal(t, "img", qp.Image)
	own := []string{"--host", "0.0.0.0", "--port", "8012", "--engine-url", "http://127.0.0.1:8000",
		"--container-concurrency", "4", "--request-timeout", "90s", "--pod-name", "$(POD_NAME)"}
	require.Equal(t, own, qp.Args[:len(own)])
	require.Equal(t, queueProxyEngineArgs(r), qp.Args[len(own):])
	require.Empty(t, qp.VolumeMounts, "no LoRA, no mount")
}
