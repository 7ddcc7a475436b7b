package engine

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

// Loopback is the only address engines listen on: the queue-proxy beside
// each engine is its one way in.
const Loopback = "127.0.0.1"

// PortVar is the placeholder a runtime expands to the engine's port where
// the port is only known when the replica starts (kvasir local).
const PortVar = "$(PORT)"

// KVEventsPortVar is the placeholder a runtime expands to the port reserved
// for the engine's KV events, in spec.template.engine.kvEvents.endpoint and
// in the engine's arguments.
const KVEventsPortVar = "$(KV_EVENTS_PORT)"

// DefaultKVEventsPort is the KV events port on Kubernetes, where every pod
// has its own network namespace (vLLM's default port).
const DefaultKVEventsPort = 5557

// DefaultKVEventsEndpoint is where engines publish KV events unless the
// template says otherwise: the queue-proxy binds it on loopback, the
// engine connects.
const DefaultKVEventsEndpoint = "tcp://" + Loopback + ":" + KVEventsPortVar

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
	// KVEventsPort is the port of the engine's KV events: a number, or
	// KVEventsPortVar ("" = DefaultKVEventsPort).
	KVEventsPort string
	// SimCommand runs the simulator (kvasir local: the kvasir binary and
	// "sim"); nil leaves the image's entrypoint (Kubernetes).
	SimCommand []string
	// EngineCommand replaces vLLM's `vllm serve` and SGLang's `python3 -m
	// sglang.launch_server` (kvasir local's engine.command, a vLLM in a
	// virtualenv say), inside any wrapper the group needs; nil keeps them.
	EngineCommand []string
	// Group is the pod's place in its replica's serving group: the
	// engine's parallelism flags and its rank's flags (docs/engines.md,
	// "Serving groups"). Nil for a template without parallelism.
	Group *Group
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
	if s.KVEventsPort == "" {
		s.KVEventsPort = strconv.Itoa(DefaultKVEventsPort)
	}
	if err := s.Group.validate(e.Type); err != nil {
		return Launch{}, err
	}
	r := Resolve(e)
	// A worker of a group has no queue-proxy beside it: nobody would
	// follow its KV events.
	events := r.FollowsEvents() && !s.worker()
	user := append(append([]string(nil), e.Args...), s.RoleArgs...)
	var l Launch
	switch e.Type {
	case v1alpha1.EngineVLLM:
		// vllm serve MODEL: the positional model (--model is deprecated
		// since vLLM 0.11 and refused beside a served name in current
		// releases).
		l.Command = commandOr(s.EngineCommand, "vllm", "serve")
		l.Args = append([]string{s.Model}, user...)
		l.Args = append(l.Args, "--host", Loopback, "--port", s.Port, "--served-model-name", s.Model,
			// Prefix caching is on by default only for some model types.
			"--enable-prefix-caching")
		if kv := r.KVEvents; events {
			l.Args = append(l.Args, "--kv-events-config", kvEventsConfig(kv, true, s.KVEventsPort))
		}
		l.Args = appendLoRA(l.Args, s.LoRAAdapters, "--max-loras", "--lora-modules")
		if len(s.LoRAAdapters) > 0 {
			// Adapters added to the service later are loaded at run time.
			l.Env = append(l.Env, corev1.EnvVar{Name: RuntimeLoRAEnv, Value: "True"})
		}
		if s.grouped() {
			l.Args = append(l.Args, vllmGroupArgs(s)...)
		}
		if vllmNeedsRay(s) {
			l = vllmRay(s, l)
		}
		if vllmNeedsDPStartRank(s) {
			l = vllmDPStartRank(s, l)
		}
	case v1alpha1.EngineSGLang:
		l.Command = commandOr(s.EngineCommand, "python3", "-m", "sglang.launch_server")
		l.Args = append([]string{"--model-path", s.Model}, user...)
		l.Args = append(l.Args, "--host", Loopback, "--port", s.Port, "--served-model-name", s.Model,
			// SGLang serves /metrics only when asked; the queue-proxy reads it.
			"--enable-metrics")
		if kv := r.KVEvents; events {
			l.Args = append(l.Args, "--kv-events-config", kvEventsConfig(kv, false, s.KVEventsPort))
		}
		l.Args = appendLoRA(l.Args, s.LoRAAdapters, "--max-loras-per-batch", "--lora-paths")
		if s.grouped() {
			l.Args = append(l.Args, sglangGroupArgs(s)...)
		}
	case v1alpha1.EngineSim:
		// Go's flag package keeps the last value too: the platform's
		// flags come after the template's.
		l.Command = append([]string(nil), s.SimCommand...)
		l.Args = append(user, "--host", Loopback, "--port", s.Port, "--model", s.Model)
		if s.Role != "" {
			l.Args = append(l.Args, "--role="+s.Role)
		}
		if kv := r.KVEvents; events {
			l.Args = append(l.Args, "--kv-events-endpoint", ExpandKVEventsPort(kv.Endpoint, s.KVEventsPort))
			if kv.Topic != "" {
				l.Args = append(l.Args, "--kv-events-topic", kv.Topic)
			}
		}
		for _, ad := range s.LoRAAdapters { // the simulator serves the declared adapters
			l.Args = append(l.Args, "--lora-modules", ad+"="+ad)
		}
		if s.grouped() {
			l.Args = append(l.Args, simGroupArgs(s)...)
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
		if events && s.KVEventsPort != KVEventsPortVar {
			l.Env = append(l.Env, corev1.EnvVar{Name: "KV_EVENTS_PORT", Value: s.KVEventsPort})
		}
		l.Env = append(l.Env, customGroupEnv(s)...)
	default:
		return Launch{}, fmt.Errorf("spec.template.engine.type: unknown %q", e.Type)
	}
	return l, nil
}

// commandOr is command when set, else def.
func commandOr(command []string, def ...string) []string {
	if len(command) > 0 {
		return append([]string(nil), command...)
	}
	return def
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

// Resolved is an engine's endpoints with every per-type default applied.
type Resolved struct {
	// HealthPath and MetricsPath are the engine's readiness and metrics
	// paths.
	HealthPath, MetricsPath string
	// KVEvents is the engine's event publisher.
	KVEvents KVEvents
	// Tokenizer is how routers tokenize as the engine does.
	Tokenizer v1alpha1.TokenizerSpec
}

// KVEvents is an engine's resolved event publisher.
type KVEvents struct {
	Enabled bool
	// Endpoint may hold KVEventsPortVar.
	Endpoint string
	Topic    string
}

// DefaultTokenizePath is vLLM's tokenization endpoint.
const DefaultTokenizePath = "/tokenize"

// Resolve applies the per-type defaults to e's health and metrics paths,
// KV events and tokenizer: the one place they are decided, for both
// runtimes.
//
//	type    health   metrics   KV events   tokenizer
//	vllm    /health  /metrics  on          engine /tokenize
//	sglang  /health  /metrics  on          none
//	sim     /health  /metrics  on          builtin
//	custom  /health  /metrics  if endpoint none
func Resolve(e v1alpha1.EngineSpec) Resolved {
	r := Resolved{HealthPath: "/health", MetricsPath: "/metrics"}
	if e.HealthPath != "" {
		r.HealthPath = e.HealthPath
	}
	if e.MetricsPath != "" {
		r.MetricsPath = e.MetricsPath
	}
	kv := e.KVEvents
	if kv == nil {
		kv = &v1alpha1.KVEventsSpec{}
	}
	r.KVEvents = KVEvents{Enabled: e.Type != v1alpha1.EngineCustom || kv.Endpoint != "", Endpoint: kv.Endpoint, Topic: kv.Topic}
	if kv.Enabled != nil {
		r.KVEvents.Enabled = *kv.Enabled
	}
	if r.KVEvents.Endpoint == "" {
		r.KVEvents.Endpoint = DefaultKVEventsEndpoint
	}
	switch e.Type {
	case v1alpha1.EngineVLLM:
		r.Tokenizer = v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine}
	case v1alpha1.EngineSim:
		r.Tokenizer = v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerBuiltin}
	default:
		r.Tokenizer = v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerNone}
	}
	if e.Tokenizer != nil {
		r.Tokenizer = *e.Tokenizer
	}
	if r.Tokenizer.Type == v1alpha1.TokenizerEngine && r.Tokenizer.Path == "" {
		r.Tokenizer.Path = DefaultTokenizePath
	}
	return r
}

// FollowsEvents reports whether the engine publishes KV events and the
// queue-proxy follows them: both need the events on and a tokenizer, as
// routers key blocks by the engine's tokens. Without one the queue-proxy
// models the cache from the prompts it forwards, and the engine is not
// asked to publish.
func (r Resolved) FollowsEvents() bool {
	return r.KVEvents.Enabled && r.Tokenizer.Type != v1alpha1.TokenizerNone && r.Tokenizer.Type != ""
}

// LoRAFile is the document of the queue-proxy's --lora-adapters-file: the
// adapters its engine must serve, kept current by the runtime (a file
// kvasir local writes; a ConfigMap volume on Kubernetes).
type LoRAFile struct {
	// LoRAAdapters are the adapters' names; an adapter's name is also its
	// path.
	LoRAAdapters []string `json:"loraAdapters"`
}

// LoRAPaths are an engine's endpoints to load and unload a LoRA adapter at
// run time: SGLang's have no /v1; vLLM's (which the simulator and
// llm-d-inference-sim serve too) are the default.
func LoRAPaths(t v1alpha1.EngineType) (load, unload string) {
	if t == v1alpha1.EngineSGLang {
		return "/load_lora_adapter", "/unload_lora_adapter"
	}
	return "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
}

// RuntimeLoRAEnv lets vLLM load and unload adapters at run time.
const RuntimeLoRAEnv = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

// RoutingTokenizer is how routers tokenize for this engine: its tokenizer
// when the queue-proxy follows the engine's events (the index then holds
// the engine's token keys), none otherwise (the index holds the
// queue-proxy's text keys, and so must the routers).
func (r Resolved) RoutingTokenizer() v1alpha1.TokenizerSpec {
	if !r.FollowsEvents() {
		return v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerNone}
	}
	return r.Tokenizer
}

// QueueProxyArgs are the queue-proxy flags that follow from the engine:
// its health and metrics paths, and the engine's KV events when they are
// followed. kvPort is the KV events port: a number, or KVEventsPortVar for
// the runtime to expand.
//
// loraFile, when set, is the file of the service's adapters the runtime
// keeps current: the queue-proxy loads and unloads adapters on its engine to
// match it, through the engine's endpoints.
func QueueProxyArgs(e v1alpha1.EngineSpec, kvPort, loraFile string) []string {
	r := Resolve(e)
	args := []string{"--engine-health-path", r.HealthPath, "--engine-metrics-path", r.MetricsPath}
	if loraFile != "" {
		load, unload := LoRAPaths(e.Type)
		args = append(args, "--lora-adapters-file", loraFile, "--lora-load-path", load, "--lora-unload-path", unload)
	}
	if !r.FollowsEvents() {
		return args
	}
	if kvPort == "" {
		kvPort = strconv.Itoa(DefaultKVEventsPort)
	}
	endpoint := ExpandKVEventsPort(r.KVEvents.Endpoint, kvPort)
	// The engine binds a wildcard endpoint (vLLM's rule) and the
	// queue-proxy connects to it over loopback; otherwise the queue-proxy
	// binds the endpoint and the engine connects.
	if rest, ok := strings.CutPrefix(endpoint, "tcp://"); ok {
		if host, port, err := net.SplitHostPort(rest); err == nil && isWildcard(host) {
			args = append(args, "--kv-events-endpoint", "tcp://"+net.JoinHostPort(Loopback, port))
			return appendTopic(args, r.KVEvents.Topic)
		}
	}
	args = append(args, "--kv-events-endpoint", endpoint, "--kv-events-bind")
	return appendTopic(args, r.KVEvents.Topic)
}

func appendTopic(args []string, topic string) []string {
	if topic != "" {
		args = append(args, "--kv-events-topic", topic)
	}
	return args
}

// isWildcard reports whether vLLM's publisher binds an endpoint with this
// host: vLLM binds when the endpoint contains "*" or "::" (and connects
// otherwise, 0.0.0.0 included).
func isWildcard(host string) bool {
	return host == "*" || strings.Contains(host, "::")
}

// ExpandKVEventsPort replaces KVEventsPortVar in s with port.
func ExpandKVEventsPort(s, port string) string {
	return strings.ReplaceAll(s, KVEventsPortVar, port)
}

// kvEventsConfig is the JSON of vLLM's and SGLang's --kv-events-config.
// vLLM needs enable_kv_cache_events; current SGLang refuses it and turns
// events on by the publisher alone.
func kvEventsConfig(kv KVEvents, vllm bool, port string) string {
	type config struct {
		Enable    *bool  `json:"enable_kv_cache_events,omitempty"`
		Publisher string `json:"publisher"`
		Endpoint  string `json:"endpoint"`
		Topic     string `json:"topic"`
	}
	c := config{Publisher: "zmq", Endpoint: ExpandKVEventsPort(kv.Endpoint, port), Topic: kv.Topic}
	if vllm {
		on := true
		c.Enable = &on
	}
	b, _ := json.Marshal(c) // strings only: cannot fail
	return string(b)
}
