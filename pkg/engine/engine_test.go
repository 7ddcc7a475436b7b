package engine

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// Every engine's command line, as data: testdata/<name>.golden holds the
// command, the arguments one per line and the environment. go test
// ./pkg/engine -update rewrites them; the diff is the review.
func TestCommandLines(t *testing.T) {
	vllm := v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Port: 8000}
	sglang := v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang, Port: 8000}
	sim := v1alpha1.EngineSpec{Type: v1alpha1.EngineSim, Port: 8000}
	for name, s := range map[string]Spec{
		"vllm": {Engine: vllm, Model: "meta-llama/Llama-3.1-8B-Instruct"},
		"vllm-args-local": {Engine: withArgs(vllm, "--max-model-len=8192", "--gpu-memory-utilization", "0.9"),
			Model: "meta-llama/Llama-3.1-8B-Instruct", Port: PortVar, KVEventsPort: KVEventsPortVar},
		"vllm-lora": {Engine: vllm, Model: "meta-llama/Llama-3.1-8B-Instruct",
			LoRAAdapters: []string{"org/sql-lora", "org/chat-lora"}},
		"vllm-prefill": {Engine: withArgs(vllm, "--max-model-len=8192"), Model: "m", Role: "prefill",
			RoleArgs: []string{`--kv-transfer-config={"kv_connector":"NixlConnector","kv_role":"kv_both"}`}},
		"sglang": {Engine: sglang, Model: "Qwen/Qwen2.5-7B-Instruct"},
		"sglang-tokenizer-file": {Engine: withTokenizer(sglang, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerFile,
			Path: "/models/qwen/tokenizer.json"}), Model: "Qwen/Qwen2.5-7B-Instruct"},
		"sglang-lora-local": {Engine: withArgs(sglang, "--mem-fraction-static", "0.8"), Model: "Qwen/Qwen2.5-7B-Instruct",
			LoRAAdapters: []string{"org/a"}, Port: PortVar, KVEventsPort: KVEventsPortVar},
		"sim-kubernetes": {Engine: withArgs(sim, "--startup-delay=2s"), Model: "demo", Role: "decode",
			LoRAAdapters: []string{"fr"}},
		"sim-local":           {Engine: sim, Model: "demo", Port: PortVar, KVEventsPort: KVEventsPortVar, SimCommand: []string{"/usr/local/bin/kvasir", "sim"}},
		"vllm-no-kv-events":   {Engine: withKV(vllm, &v1alpha1.KVEventsSpec{Enabled: ptr(false)}), Model: "m"},
		"vllm-kv-events-bind": {Engine: withKV(vllm, &v1alpha1.KVEventsSpec{Endpoint: "tcp://*:6000", Topic: "kv"}), Model: "m"},
		"custom-kv-events-local": {Engine: withKV(v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 9000,
			Command: []string{"peer"}, Args: []string{"--port", "$(PORT)", "--zmq-endpoint", "tcp://127.0.0.1:$(KV_EVENTS_PORT)"}},
			&v1alpha1.KVEventsSpec{Endpoint: "tcp://127.0.0.1:$(KV_EVENTS_PORT)"}), Model: "m", Port: PortVar, KVEventsPort: KVEventsPortVar},
		"custom-kv-events": {Engine: withKV(v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 9000,
			Command: []string{"peer"}}, &v1alpha1.KVEventsSpec{Endpoint: "tcp://127.0.0.1:$(KV_EVENTS_PORT)"}), Model: "m"},
		"custom": {Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Port: 9000,
			Command: []string{"llama-server"}, Args: []string{"--host", "$(HOST)", "--port", "$(PORT)"}}, Model: "m"},
	} {
		t.Run(name, func(t *testing.T) {
			l, err := Build(s)
			require.NoError(t, err)
			got := render(l)
			file := filepath.Join("testdata", name+".golden")
			if *update {
				require.NoError(t, os.WriteFile(file, []byte(got), 0o644))
			}
			want, err := os.ReadFile(file)
			require.NoError(t, err, "go test ./pkg/engine -update writes it")
			require.Equal(t, string(want), got)
		})
	}
}

func withArgs(e v1alpha1.EngineSpec, args ...string) v1alpha1.EngineSpec {
	e.Args = args
	return e
}

func render(l Launch) string {
	var b strings.Builder
	command := make([]string, len(l.Command))
	for i, c := range l.Command { // a shell script of a group's leader is one word
		if command[i] = c; strings.ContainsAny(c, " \"") {
			command[i] = strconv.Quote(c)
		}
	}
	b.WriteString("command: " + strings.Join(command, " ") + "\nargs:\n")
	for _, a := range l.Args {
		b.WriteString("  " + a + "\n")
	}
	for _, e := range l.Env {
		b.WriteString("env: " + e.Name + "=" + e.Value + "\n")
	}
	return b.String()
}

// The platform's own flags come after the template's and the role's, so
// that they win in both engines' parsers (argparse keeps the last
// occurrence): a template cannot move the engine off loopback or rename
// the model.
func TestPlatformFlagsComeLast(t *testing.T) {
	for _, typ := range []v1alpha1.EngineType{v1alpha1.EngineVLLM, v1alpha1.EngineSGLang, v1alpha1.EngineSim} {
		name := "--served-model-name"
		if typ == v1alpha1.EngineSim {
			name = "--model"
		}
		l, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: typ, Port: 8000,
			Args: []string{"--host", "0.0.0.0", name, "other", "--port", "1"}}, Model: "m"})
		require.NoError(t, err)
		require.Equal(t, Loopback, last(l.Args, "--host"), "%s", typ)
		require.Equal(t, "m", last(l.Args, name), "%s", typ)
		require.Equal(t, "8000", last(l.Args, "--port"), "%s", typ)
	}
	l, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM, Args: []string{"--max-model-len=4096"}}, Model: "m", Port: "8000"})
	require.NoError(t, err)
	require.Equal(t, "m", l.Args[0], "vLLM takes the model first, positional, even with template arguments")
}

func TestCustomEngineEnvironment(t *testing.T) {
	l, err := Build(Spec{Engine: v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, Command: []string{"srv"}}, Port: PortVar})
	require.NoError(t, err)
	require.Equal(t, []corev1.EnvVar{{Name: "HOST", Value: Loopback}}, l.Env, "the local runtime sets PORT itself")
	_, err = Build(Spec{Engine: v1alpha1.EngineSpec{Type: "tgi"}})
	require.ErrorContains(t, err, "spec.template.engine.type")
}

// last returns the value after the last occurrence of flag.
func last(args []string, flag string) string {
	v := ""
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			v = args[i+1]
		}
	}
	return v
}

func withKV(e v1alpha1.EngineSpec, kv *v1alpha1.KVEventsSpec) v1alpha1.EngineSpec {
	e.KVEvents = kv
	if e.Type == v1alpha1.EngineCustom {
		e.Tokenizer = &v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine}
	}
	return e
}

func withTokenizer(e v1alpha1.EngineSpec, tk v1alpha1.TokenizerSpec) v1alpha1.EngineSpec {
	e.Tokenizer = &tk
	return e
}

func TestQueueProxyLoRAArgs(t *testing.T) {
	require.Equal(t, []string{"--engine-health-path", "/health", "--engine-metrics-path", "/metrics",
		"--lora-adapters-file", "/etc/kvasir/lora/lora-adapters.json",
		"--lora-load-path", "/load_lora_adapter", "--lora-unload-path", "/unload_lora_adapter"},
		QueueProxyArgs(v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang}, "", "/etc/kvasir/lora/lora-adapters.json"))
	args := QueueProxyArgs(v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM}, "", "/f")
	require.Subset(t, args, []string{"--lora-load-path", "/v1/load_lora_adapter", "--lora-unload-path", "/v1/unload_lora_adapter"})
}

func TestRoutingTokenizer(t *testing.T) {
	file := v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerFile, Path: "/t.json"}
	on := withTokenizer(v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}, file)
	require.Equal(t, file, Resolve(on).RoutingTokenizer())
	// Without events the index holds the queue-proxy's text keys: routers
	// must not key on tokens.
	off := withKV(on, &v1alpha1.KVEventsSpec{Enabled: ptr(false)})
	require.Equal(t, v1alpha1.TokenizerNone, Resolve(off).RoutingTokenizer().Type)
	require.Equal(t, v1alpha1.TokenizerEngine, Resolve(v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM}).RoutingTokenizer().Type)
}

func TestQueueProxyArgs(t *testing.T) {
	paths := []string{"--engine-health-path", "/health", "--engine-metrics-path", "/metrics"}
	for _, tc := range []struct {
		e    v1alpha1.EngineSpec
		port string
		want []string
	}{
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM}, "",
			append(paths, "--kv-events-endpoint", "tcp://127.0.0.1:5557", "--kv-events-bind")},
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}, KVEventsPortVar,
			append(paths, "--kv-events-endpoint", "tcp://127.0.0.1:$(KV_EVENTS_PORT)", "--kv-events-bind")},
		// The engine binds a wildcard: the queue-proxy connects over loopback.
		{withKV(v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM}, &v1alpha1.KVEventsSpec{Endpoint: "tcp://*:$(KV_EVENTS_PORT)", Topic: "kv"}), "6000",
			append(paths, "--kv-events-endpoint", "tcp://127.0.0.1:6000", "--kv-events-topic", "kv")},
		// No tokenizer (SGLang's default), or events off: the cache is modelled.
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang}, "", paths},
		{withKV(v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM}, &v1alpha1.KVEventsSpec{Enabled: ptr(false)}), "", paths},
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, HealthPath: "/health/ready", MetricsPath: "/m"}, "",
			[]string{"--engine-health-path", "/health/ready", "--engine-metrics-path", "/m"}},
	} {
		require.Equal(t, tc.want, QueueProxyArgs(tc.e, tc.port, ""), "%+v", tc.e)
	}
}

func ptr[T any](v T) *T { return &v }

func TestResolveDefaults(t *testing.T) {
	for _, tc := range []struct {
		e    v1alpha1.EngineSpec
		want Resolved
	}{
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineVLLM}, Resolved{"/health", "/metrics",
			KVEvents{true, DefaultKVEventsEndpoint, ""}, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine, Path: "/tokenize"}}},
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineSGLang}, Resolved{"/health", "/metrics",
			KVEvents{true, DefaultKVEventsEndpoint, ""}, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerNone}}},
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineSim}, Resolved{"/health", "/metrics",
			KVEvents{true, DefaultKVEventsEndpoint, ""}, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerBuiltin}}},
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom}, Resolved{"/health", "/metrics",
			KVEvents{false, DefaultKVEventsEndpoint, ""}, v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerNone}}},
		{v1alpha1.EngineSpec{Type: v1alpha1.EngineCustom, HealthPath: "/health/ready", MetricsPath: "/m",
			KVEvents:  &v1alpha1.KVEventsSpec{Endpoint: "tcp://*:7000", Topic: "t"},
			Tokenizer: &v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine}},
			Resolved{"/health/ready", "/m", KVEvents{true, "tcp://*:7000", "t"},
				v1alpha1.TokenizerSpec{Type: v1alpha1.TokenizerEngine, Path: "/tokenize"}}},
	} {
		require.Equal(t, tc.want, Resolve(tc.e), "%+v", tc.e)
	}
}
