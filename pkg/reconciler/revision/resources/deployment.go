package resources

import (
	"fmt"
	"maps"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"knative.dev/pkg/kmeta"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
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
}

// Ports of a revision pod.
const (
	// QueueProxyPort is where the queue-proxy serves traffic, readiness and
	// stats; the Service and its EndpointSlices point here.
	QueueProxyPort = 8012
	// QueueProxyPortName names it in the Service.
	QueueProxyPortName = "http"
	// drainGrace is added to the request timeout for termination.
	drainGrace = 30
)

// Images of the real engines, when the template gives none.
const (
	DefaultVLLMImage   = "vllm/vllm-openai:v0.11.0"
	DefaultSGLangImage = "lmsysorg/sglang:v0.5.3"
)

// engineContainer builds the engine container of a role.
func engineContainer(rev *v1alpha1.ModelRevision, role string, cfg Config) (corev1.Container, error) {
	e := rev.Spec.Engine
	port := strconv.Itoa(int(e.Port))
	c := corev1.Container{
		Name:  "engine",
		Image: e.Image,
		Env:   append([]corev1.EnvVar(nil), e.Env...),
		Ports: []corev1.ContainerPort{{Name: "engine", ContainerPort: e.Port, Protocol: corev1.ProtocolTCP}},
	}
	var roleArgs []string
	if rev.Spec.Roles != nil {
		switch role {
		case RolePrefill:
			roleArgs = rev.Spec.Roles.Prefill.Args
		case RoleDecode:
			roleArgs = rev.Spec.Roles.Decode.Args
		}
	}
	args := append(append([]string(nil), e.Args...), roleArgs...)
	switch e.Type {
	case v1alpha1.EngineVLLM:
		if c.Image == "" {
			c.Image = DefaultVLLMImage
		}
		c.Args = append([]string{"--model", rev.Spec.Model}, args...)
		c.Args = append(c.Args, "--port", port, "--served-model-name", rev.Spec.Model)
	case v1alpha1.EngineSGLang:
		if c.Image == "" {
			c.Image = DefaultSGLangImage
		}
		c.Command = []string{"python3", "-m", "sglang.launch_server"}
		c.Args = append([]string{"--model-path", rev.Spec.Model}, args...)
		c.Args = append(c.Args, "--host", "0.0.0.0", "--port", port, "--served-model-name", rev.Spec.Model)
	case v1alpha1.EngineSim:
		if c.Image == "" {
			c.Image = cfg.SimulatorImage
		}
		c.Args = []string{"--host", "0.0.0.0", "--port", port, "--model", rev.Spec.Model}
		if role != RoleUnified {
			c.Args = append(c.Args, "--role="+role)
		}
		for _, ad := range rev.Spec.LoRAAdapters {
			c.Args = append(c.Args, "--lora-modules", ad+"="+ad)
		}
		c.Args = append(c.Args, args...)
	case v1alpha1.EngineCustom:
		if c.Image == "" {
			return c, fmt.Errorf("spec.engine.image: required on Kubernetes")
		}
		c.Command = e.Command
		c.Args = args
	default:
		return c, fmt.Errorf("spec.engine.type: unknown %q", e.Type)
	}
	// The engine is stopped only once the queue-proxy has drained: the
	// kubelet runs this hook before sending the engine its SIGTERM.
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/kvasir/wait-for-drain", Port: intstr.FromInt32(QueueProxyPort)}}}
	return c, nil
}

// MakeDeployment builds the Deployment of one role of a revision on an
// accelerator variant (nil without variants), owned by the revision.
// replicas is the desired replica count.
func MakeDeployment(rev *v1alpha1.ModelRevision, role string, v *v1alpha1.AcceleratorVariant, replicas int32, cfg Config) (*appsv1.Deployment, error) {
	engine, err := engineContainer(rev, role, cfg)
	if err != nil {
		return nil, err
	}
	engine.Resources = rev.Spec.VariantResources(v)
	var nodeSelector map[string]string
	variant := ""
	if v != nil {
		nodeSelector = maps.Clone(v.NodeSelector)
		variant = v.Name
	}
	timeout := int64(rev.Spec.TimeoutSeconds)
	qp := corev1.Container{
		Name:  "queue-proxy",
		Image: cfg.QueueProxyImage,
		Args: []string{
			"--host", "0.0.0.0",
			"--port", strconv.Itoa(QueueProxyPort),
			"--engine-url", "http://127.0.0.1:" + strconv.Itoa(int(rev.Spec.Engine.Port)),
			"--container-concurrency", strconv.Itoa(rev.Spec.ContainerConcurrency),
			"--request-timeout", strconv.FormatInt(timeout, 10) + "s",
		},
		Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
		Ports: []corev1.ContainerPort{{Name: QueueProxyPortName, ContainerPort: QueueProxyPort, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/kvasir/ready", Port: intstr.FromInt32(QueueProxyPort)}},
			// Every integer is spelled out, defaults included: the
			// reconciler compares what it builds with what the API server
			// stored, and a zero it left out would differ from the
			// default filled in.
			TimeoutSeconds:   1,
			PeriodSeconds:    1,
			SuccessThreshold: 1,
			FailureThreshold: 3,
		},
	}
	qp.Args = append(qp.Args, "--pod-name", "$(POD_NAME)")
	labels := DeploymentLabels(rev, role, variant)
	grace := timeout + drainGrace
	deadline := cfg.ProgressDeadlineSeconds
	if deadline == 0 {
		deadline = 600
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name:            DeploymentName(rev, role, variant),
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
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{engine, qp},
					NodeSelector:                  nodeSelector,
					TerminationGracePeriodSeconds: &grace,
					EnableServiceLinks:            new(bool),
				},
			},
		},
	}
	return d, nil
}

// MakeService builds the Service of one role of a revision: its
// EndpointSlices list the ready queue-proxies.
func MakeService(rev *v1alpha1.ModelRevision, role string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:            ServiceName(rev, role),
			Namespace:       rev.Namespace,
			Labels:          Labels(rev, role),
			OwnerReferences: []metav1.OwnerReference{*kmeta.NewControllerRef(rev)},
		},
		Spec: corev1.ServiceSpec{
			Selector: Selector(rev, role),
			Ports: []corev1.ServicePort{{Name: QueueProxyPortName, Port: 80, Protocol: corev1.ProtocolTCP,
				TargetPort: intstr.FromInt32(QueueProxyPort)}},
		},
	}
}
