package engine

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// Loopback is the only address engines listen on: the queue-proxy beside
// each engine is its one way in.
const Loopback = "127.0.0.1"

// PortVar is the placeholder a runtime expands to the engine's port where
// the port is only known when the replica starts (kvasir local).
const PortVar = "$(PORT)"

// Spec is everything an engine's command line depends on.
type Spec struct {
	// Engine is the revision's engine.
	Engine v1alpha1.EngineSpec
	// Model is the served model name (spec.model).
	Model string
	// LoRAAdapters are the adapters served next to the model.
	LoRAAdapters []string
	// Role is "prefill" or "decode" for a disaggregated revision's
	// replicas, "" for a unified one.
	Role string
	// RoleArgs are the role's own arguments (spec.template.roles.*.args).
	RoleArgs []string
	// Port is the port the engine listens on: a number, or PortVar.
	Port string
	// SimCommand runs the simulator (kvasir local: the kvasir binary and
	// "sim"); nil leaves the image's entrypoint (Kubernetes).
	SimCommand []string
}

// Launch is an engine's command line.
type Launch struct {
	// Command replaces the image's entrypoint; nil keeps it. In local mode
	// Command followed by Args is the argv.
	Command []string
	// Args follow the command.
	Args []string
	// Env is added to the template's environment (a template variable of
	// the same name wins).
	Env []corev1.EnvVar
}

// Argv is the whole command line, for runtimes that start processes.
func (l Launch) Argv() []string {
	return append(append([]string(nil), l.Command...), l.Args...)
}

// Build returns the command line of the engine of s.
func Build(s Spec) (Launch, error) {
	e := s.Engine
	if s.Port == "" {
		s.Port = strconv.Itoa(int(e.Port))
	}
	user := append(append([]string(nil), e.Args...), s.RoleArgs...)
	var l Launch
	switch e.Type {
	case v1alpha1.EngineVLLM:
		// vllm serve MODEL: the positional model (--model is deprecated
		// since vLLM 0.11 and refused beside a served name in current
		// releases).
		l.Command = []string{"vllm", "serve"}
		l.Args = append([]string{s.Model}, user...)
		l.Args = append(l.Args, "--host", Loopback, "--port", s.Port, "--served-model-name", s.Model,
			// Prefix caching is on by default only for some model types.
			"--enable-prefix-caching")
		l.Args = appendLoRA(l.Args, s.LoRAAdapters, "--max-loras", "--lora-modules")
	case v1alpha1.EngineSGLang:
		l.Command = []string{"python3", "-m", "sglang.launch_server"}
		l.Args = append([]string{"--model-path", s.Model}, user...)
		l.Args = append(l.Args, "--host", Loopback, "--port", s.Port, "--served-model-name", s.Model,
			// SGLang serves /metrics only when asked; the queue-proxy reads it.
			"--enable-metrics")
		l.Args = appendLoRA(l.Args, s.LoRAAdapters, "--max-loras-per-batch", "--lora-paths")
	case v1alpha1.EngineSim:
		// Go's flag package keeps the last value too: the platform's
		// flags come after the template's.
		l.Command = append([]string(nil), s.SimCommand...)
		l.Args = append(user, "--host", Loopback, "--port", s.Port, "--model", s.Model)
		if s.Role != "" {
			l.Args = append(l.Args, "--role="+s.Role)
		}
		for _, ad := range s.LoRAAdapters { // the simulator serves the declared adapters
			l.Args = append(l.Args, "--lora-modules", ad+"="+ad)
		}
	case v1alpha1.EngineCustom:
		// The platform cannot tell a custom engine where to listen: it
		// gets the address and port as $(HOST) and $(PORT) for its
		// arguments and in its environment, and must bind $(HOST).
		l.Command = append([]string(nil), e.Command...)
		l.Args = user
		l.Env = []corev1.EnvVar{{Name: "HOST", Value: Loopback}}
		if s.Port != PortVar {
			l.Env = append(l.Env, corev1.EnvVar{Name: "PORT", Value: s.Port})
		}
	default:
		return Launch{}, fmt.Errorf("spec.template.engine.type: unknown %q", e.Type)
	}
	return l, nil
}

// appendLoRA adds the LoRA flags vLLM and SGLang share in shape: enable,
// as many adapters at once as are declared, and name=path for each (an
// adapter's name is also its path, a Hugging Face repository or a
// directory).
func appendLoRA(args, adapters []string, maxFlag, listFlag string) []string {
	if len(adapters) == 0 {
		return args
	}
	args = append(args, "--enable-lora", maxFlag, strconv.Itoa(len(adapters)), listFlag)
	for _, ad := range adapters {
		args = append(args, ad+"="+ad)
	}
	return args
}
