package resources

import (
	"encoding/json"
	"fmt"
	"maps"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"knative.dev/pkg/kmeta"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/engine"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/reconciler/revision/resources/names"
)

// Config is what the controller adds to every revision's pods.
type Config struct {
	// QueueProxyImage runs the queue-proxy sidecar.
	QueueProxyImage string
	// SimulatorImage runs engine.type sim.
	SimulatorImage string
	// ProgressDeadline bounds a Deployment's rollout (then the revision is
	// not ready, with the reason). Default 600s.
	ProgressDeadlineSeconds int32
	// SystemNamespace is where Kvasir's activators and controller run: the
	// only pods a revision's NetworkPolicy lets reach its queue-proxies.
	// Default DefaultSystemNamespace.
	SystemNamespace string
	// GroupSchedulerName is the schedulerName of serving groups' pods,
	// leaders and workers (MakeLeaderWorkerSet): VolcanoSchedulerName
	// when the cluster has Volcano, so that each group is one Volcano
	// PodGroup; "" for the cluster's default scheduler. Deployments'
	// pods always have the default.
	GroupSchedulerName string
	// CoschedulingSchedulerName is the scheduler that runs
	// scheduler-plugins' coscheduling plugin (the controller's
	// --coscheduling-scheduler-name, DefaultCoschedulingSchedulerName);
	// "" turns coscheduling off.
	CoschedulingSchedulerName string
	// Coscheduling is set (per reconcile) when the cluster serves
	// scheduler-plugins' coscheduling PodGroup and not Volcano's: the
	// groups' pods of a role without a topology key are then held by
	// SchedulingGatePodGroup and scheduled by CoschedulingSchedulerName
	// (UsesCoscheduling), in place of GroupSchedulerName.
	Coscheduling bool
}

// VolcanoSchedulerName is Volcano's scheduler, which places a PodGroup's
// pods all at once.
const VolcanoSchedulerName = "volcano"

// DefaultCoschedulingSchedulerName is the scheduler name scheduler-plugins'
// own manifests give the second scheduler that runs coscheduling.
const DefaultCoschedulingSchedulerName = "scheduler-plugins-scheduler"

// DefaultSystemNamespace is the namespace config/ installs Kvasir in.
const DefaultSystemNamespace = "kvasir-serving"

// Labels of Kvasir's own pods (config/500-*.yaml), which revision pods'
// NetworkPolicies name.
const (
	LabelAppName        = "app.kubernetes.io/name"
	AppName             = "kvasir"
	LabelComponent      = "app.kubernetes.io/component"
	ComponentActivator  = "activator"
	ComponentController = "controller"
)

// Ports of a revision pod.
const (
	// drainGrace is added to the request timeout for termination.
	drainGrace = 30
	// EngineLoopback is the only address engines listen on: the
	// queue-proxy in the same pod is their one client.
	EngineLoopback = engine.Loopback
)

// Who the engine runs as, and where it may write.
const (
	// EngineUID runs the vLLM and SGLang images, which declare root, as a
	// user the restricted Pod Security Standard allows (group too).
	EngineUID = 1000
	// EngineHome is the engine's $HOME for vLLM and SGLang: an emptyDir, as
	// /root is not writable for EngineUID. Model downloads
	// (~/.cache/huggingface) and compilation caches go there.
	EngineHome = "/home/kvasir"
	// engineHomeVolume and engineTmpVolume are the engine's emptyDirs.
	engineHomeVolume = "engine-home"
	engineTmpVolume  = "engine-tmp"
)

// Images of the real engines, when the template gives none.
const (
	DefaultVLLMImage   = "vllm/vllm-openai:v0.11.0"
	DefaultSGLangImage = "lmsysorg/sglang:v0.5.3"
)

// engineContainer builds the engine container of a role; group is the
// pod's place in a serving group (nil for a one-pod replica: the command
// line of before groups). A group's worker has no queue-proxy to wait for
// when it stops.
func engineContainer(rev *v1alpha1.ModelRevision, role string, group *engine.Group, cfg Config) (corev1.Container, error) {
	e := rev.Spec.Engine
	port := strconv.Itoa(int(e.Port))
	c := corev1.Container{
		Name:            "engine",
		Image:           e.Image,
		Env:             append([]corev1.EnvVar(nil), e.Env...),
		Ports:           []corev1.ContainerPort{{Name: "engine", ContainerPort: e.Port, Protocol: corev1.ProtocolTCP}},
		SecurityContext: restrictedContainer(),
	}
	var roleArgs []string
	if rev.Spec.Roles != nil {
		switch role {
		case fleet.RolePrefill:
			roleArgs = rev.Spec.Roles.Prefill.Args
		case fleet.RoleDecode:
			roleArgs = rev.Spec.Roles.Decode.Args
		}
	}
	spec := engine.Spec{Engine: e, Model: rev.Spec.Model, LoRAAdapters: rev.Spec.LoRAAdapters, RoleArgs: roleArgs, Port: port, Group: group}
	if role != fleet.RoleUnified {
		spec.Role = role
	}
	switch e.Type {
	case v1alpha1.EngineVLLM:
		if c.Image == "" {
			c.Image = DefaultVLLMImage
		}
		runAsEngineUser(&c)
	case v1alpha1.EngineSGLang:
		if c.Image == "" {
			c.Image = DefaultSGLangImage
		}
		runAsEngineUser(&c)
	case v1alpha1.EngineSim:
		if c.Image == "" {
			c.Image = cfg.SimulatorImage
		}
		// A static binary on a nonroot base image: it writes nothing.
		c.SecurityContext.ReadOnlyRootFilesystem = ptr.To(true)
	case v1alpha1.EngineCustom:
		if c.Image == "" {
			return c, fmt.Errorf("spec.engine.image: required on Kubernetes")
		}
	}
	launch, err := engine.Build(spec)
	if err != nil {
		return c, err
	}
	c.Command, c.Args = launch.Command, launch.Args
	for _, v := range launch.Env {
		c.Env = setEnvDefault(c.Env, v.Name, v.Value)
	}
	if group != nil && group.Rank > 0 {
		return c, nil
	}
	// The engine is stopped only once the queue-proxy has drained: the
	// kubelet runs this hook before sending the engine its SIGTERM.
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/kvasir/wait-for-drain", Port: intstr.FromInt32(names.QueueProxyPort)}}}
	return c, nil
}

// restrictedContainer is what the restricted Pod Security Standard asks of
// every container beyond the pod's own context (podSecurityContext): no
// privilege escalation, no capabilities.
func restrictedContainer() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
}

// podSecurityContext is the pod-level part of the restricted Pod Security
// Standard: no container runs as root (the kubelet refuses an image that
// would), and all run under the runtime's default seccomp profile.
func podSecurityContext() *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsNonRoot:   ptr.To(true),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// runAsEngineUser runs an engine whose image declares root (vLLM, SGLang)
// as EngineUID, with its $HOME and /tmp on emptyDirs (engineVolumes): the
// image's /root is not writable for that user.
func runAsEngineUser(c *corev1.Container) {
	c.SecurityContext.RunAsUser = ptr.To[int64](EngineUID)
	c.SecurityContext.RunAsGroup = ptr.To[int64](EngineUID)
	c.Env = setEnvDefault(c.Env, "HOME", EngineHome)
	c.VolumeMounts = []corev1.VolumeMount{
		{Name: engineHomeVolume, MountPath: EngineHome},
		{Name: engineTmpVolume, MountPath: "/tmp"},
	}
}

// engineVolumes are the volumes the engine container mounts.
func engineVolumes(c corev1.Container) []corev1.Volume {
	var vs []corev1.Volume
	for _, m := range c.VolumeMounts {
		vs = append(vs, corev1.Volume{Name: m.Name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	return vs
}

// setEnvDefault adds name=value to env unless the template sets name.
func setEnvDefault(env []corev1.EnvVar, name, value string) []corev1.EnvVar {
	for _, e := range env {
		if e.Name == name {
			return env
		}
	}
	return append(env, corev1.EnvVar{Name: name, Value: value})
}

// queueProxyEngineArgs are the queue-proxy flags that follow from the
// engine (its paths, KV events and LoRA endpoints; pkg/engine decides them
// for both runtimes). Pods have their own network, so the KV events port is
// fixed.
func queueProxyEngineArgs(rev *v1alpha1.ModelRevision) []string {
	loraFile := ""
	if loraEnabled(rev) {
		loraFile = LoRAMountPath + "/" + LoRAConfigMapKey
	}
	return engine.QueueProxyArgs(rev.Spec.Engine, "", loraFile)
}

// The service's LoRA adapters reach the queue-proxies of a revision whose
// engines run with LoRA as a ConfigMap volume, which the kubelet updates in
// place: adapters added or removed later are loaded and unloaded at run
// time, with no new revision and no restart.
const (
	// LoRAConfigMapKey is the key of the adapters document
	// (engine.LoRAFile) in the service's ConfigMap.
	LoRAConfigMapKey = "lora-adapters.json"
	// LoRAMountPath is where the queue-proxy reads it.
	LoRAMountPath = "/etc/kvasir/lora"
	loraVolume    = "lora-adapters"
)

// loraEnabled reports whether a revision's engines run with LoRA: they did
// when the service had adapters as the revision was made.
func loraEnabled(rev *v1alpha1.ModelRevision) bool { return len(rev.Spec.LoRAAdapters) > 0 }

// loraVolumeOf is the ConfigMap volume of the service's adapters.
func loraVolumeOf(rev *v1alpha1.ModelRevision) corev1.Volume {
	return corev1.Volume{Name: loraVolume, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: names.LoRAConfigMap(rev.Labels[v1alpha1.LabelService])},
		// Spelled out: the API server fills the default in, and the
		// reconciler compares what it builds with what was stored.
		DefaultMode: ptr.To[int32](0o644),
		Optional:    ptr.To(true),
	}}}
}

// MakeLoRAConfigMap builds the ConfigMap of a service's LoRA adapters,
// owned by the service.
func MakeLoRAConfigMap(ms *v1alpha1.ModelService) (*corev1.ConfigMap, error) {
	b, err := json.Marshal(engine.LoRAFile{LoRAAdapters: append([]string{}, ms.Spec.LoRAAdapters...)})
	if err != nil {
		return nil, err
	}
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:            names.LoRAConfigMap(ms.Name),
			Namespace:       ms.Namespace,
			Labels:          map[string]string{v1alpha1.LabelService: ms.Name},
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(ms)},
		},
		Data: map[string]string{LoRAConfigMapKey: string(b)},
	}, nil
}

// QueueProxyResources are the queue-proxy container's requests and limits.
// No CPU limit: CFS throttling would stall the streams it relays (the
// activator and controller in config/ have none either). The memory limit
// leaves room over the 195 MiB it peaked at with 2,000 streams
// (docs/benchmarks.md).
func QueueProxyResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("100m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
	}
}

// MakeDeployment builds the Deployment of one role of a revision on an
// accelerator variant (nil without variants), owned by the revision.
// replicas is the desired replica count.
func MakeDeployment(rev *v1alpha1.ModelRevision, role string, v *v1alpha1.AcceleratorVariant, replicas int32, cfg Config) (*appsv1.Deployment, error) {
	engine, err := engineContainer(rev, role, nil, cfg)
	if err != nil {
		return nil, err
	}
	variant := variantName(v)
	labels := DeploymentLabels(rev, role, variant)
	deadline := cfg.ProgressDeadlineSeconds
	if deadline == 0 {
		deadline = 600
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name:            names.Deployment(rev, role, variant),
			Namespace:       rev.Namespace,
			Labels:          labels,
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas:                &replicas,
			Selector:                &metav1.LabelSelector{MatchLabels: DeploymentSelector(rev, role, variant)},
			ProgressDeadlineSeconds: &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       revisionPodSpec(rev, v, engine, true, cfg),
			},
		},
	}
	return d, nil
}

// variantName is v's name, "" without variants.
func variantName(v *v1alpha1.AcceleratorVariant) string {
	if v == nil {
		return ""
	}
	return v.Name
}

// revisionPodSpec is the pod of a revision role on variant v (nil without
// variants) around its engine container: the engine with the variant's
// resources (per pod) and node selector, its volumes, and, when
// queueProxy, the queue-proxy sidecar with the LoRA adapters' volume.
// Deployments' pods and serving groups' leaders have the queue-proxy;
// groups' workers do not.
func revisionPodSpec(rev *v1alpha1.ModelRevision, v *v1alpha1.AcceleratorVariant, engine corev1.Container, queueProxy bool, cfg Config) corev1.PodSpec {
	engine.Resources = rev.Spec.VariantResources(v)
	var nodeSelector map[string]string
	if v != nil {
		nodeSelector = maps.Clone(v.NodeSelector)
	}
	containers := []corev1.Container{engine}
	volumes := engineVolumes(engine)
	if queueProxy {
		containers = append(containers, queueProxyContainer(rev, cfg.QueueProxyImage))
		if loraEnabled(rev) {
			volumes = append(volumes, loraVolumeOf(rev))
		}
	}
	grace := int64(rev.Spec.TimeoutSeconds) + drainGrace
	return corev1.PodSpec{
		Containers:                    containers,
		Volumes:                       volumes,
		NodeSelector:                  nodeSelector,
		TerminationGracePeriodSeconds: &grace,
		EnableServiceLinks:            new(bool),
		// Neither container calls the Kubernetes API.
		AutomountServiceAccountToken: ptr.To(false),
		SecurityContext:              podSecurityContext(),
	}
}

// queueProxyContainer is the queue-proxy sidecar of a revision's pods, in
// front of its engine on the same pod; it reads the service's LoRA
// adapters from their ConfigMap when the engines run with LoRA.
func queueProxyContainer(rev *v1alpha1.ModelRevision, image string) corev1.Container {
	qp := corev1.Container{
		Name:  "queue-proxy",
		Image: image,
		Args: []string{
			"--host", "0.0.0.0",
			"--port", strconv.Itoa(names.QueueProxyPort),
			"--engine-url", "http://127.0.0.1:" + strconv.Itoa(int(rev.Spec.Engine.Port)),
			"--container-concurrency", strconv.Itoa(rev.Spec.ContainerConcurrency),
			"--request-timeout", strconv.Itoa(rev.Spec.TimeoutSeconds) + "s",
		},
		Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports: []corev1.ContainerPort{{Name: names.QueueProxyPortName, ContainerPort: names.QueueProxyPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/kvasir/ready", Port: intstr.FromInt32(names.QueueProxyPort)}},
			// Every integer is spelled out, defaults included: the
			// reconciler compares what it builds with what the API server
			// stored, and a zero it left out would differ from the
			// default filled in.
			TimeoutSeconds:   1,
			PeriodSeconds:    1,
			SuccessThreshold: 1,
			FailureThreshold: 3,
		},
		Resources:       QueueProxyResources(),
		SecurityContext: restrictedContainer(),
	}
	// The queue-proxy writes nothing.
	qp.SecurityContext.ReadOnlyRootFilesystem = ptr.To(true)
	qp.Args = append(qp.Args, "--pod-name", "$(POD_NAME)")
	qp.Args = append(qp.Args, queueProxyEngineArgs(rev)...)
	if loraEnabled(rev) {
		qp.VolumeMounts = []corev1.VolumeMount{{Name: loraVolume, MountPath: LoRAMountPath, ReadOnly: true}}
	}
	return qp
}

// MakeService builds the Service of one role of a revision: its
// EndpointSlices list the ready queue-proxies.
func MakeService(rev *v1alpha1.ModelRevision, role string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            names.Service(rev, role),
			Namespace:       rev.Namespace,
			Labels:          Labels(rev, role),
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)},
		},
		Spec: corev1.ServiceSpec{
			Selector: Selector(rev, role),
			Ports: []corev1.ServicePort{{Name: names.QueueProxyPortName, Port: 80, Protocol: corev1.ProtocolTCP,
				TargetPort: intstr.FromInt32(names.QueueProxyPort)}},
		},
	}
}
