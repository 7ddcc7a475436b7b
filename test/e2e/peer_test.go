package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/local"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
	"github.com/kvasir-serving/kvasir/pkg/testing/peerengine"
)

// peerService runs llm-d-inference-sim, a vLLM-compatible engine written
// outside this project, as a custom engine: its readiness is /health/ready
// (its /health answers while it is still "loading"), it publishes KV events
// to the port Kvasir reserves, and it tokenizes at /tokenize.
func peerService(bin string, minScale, maxScale int) string {
	return fmt.Sprintf(`apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: peer}
spec:
  model: peer-model
  routing: {plugins: [{name: kv-cache-aware, weight: 3}, {name: least-request, weight: 1}]}
  template:
    engine:
      type: custom
      command: [%q]
      args: ["--port", "$(PORT)", "--model", "peer-model", "--served-model-name", "peer-model",
             "--max-model-len", "4096", "--enable-kvcache", "--kv-cache-size", "64", "--block-size", "16",
             "--zmq-endpoint", "tcp://127.0.0.1:$(KV_EVENTS_PORT)", "--event-batch-size", "1",
             "--force-dummy-tokenizer", "--startup-duration", "2s",
             "--time-to-first-token", "5ms", "--inter-token-latency", "1ms"]
      env: [{name: POD_IP, value: 127.0.0.1}]
      healthPath: /health/ready
      kvEvents: {endpoint: "tcp://127.0.0.1:$(KV_EVENTS_PORT)"}
      tokenizer: {type: engine}
    scaling: {minScale: %d, maxScale: %d, initialScale: %d, target: {concurrency: 64}, scaleToZeroGracePeriod: 60s}
`, bin, minScale, maxScale, minScale)
}

func peerChat(content string, maxTokens int64) openai.ChatCompletionNewParams {
	p := chatParams(content, maxTokens)
	p.Model = "peer-model"
	return p
}

// From zero, Kvasir waits for the peer's real readiness, then the official
// SDK talks to it through Kvasir, plain and streamed.
func TestPeerEngineFromZeroWithOpenAISDK(t *testing.T) {
	p := startLocal(t, peerService(peerengine.Binary(t), 0, 1))
	client := sdk(p)
	ctx := context.Background()

	// The engine starts after the request arrives and is not ready for 2 s:
	// the answer cannot come sooner, unless the replica was declared ready
	// on /health (200 at once) instead of /health/ready.
	start := time.Now()
	resp, err := client.Chat.Completions.New(ctx, peerChat("Hello from a cold start", 8))
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 2*time.Second, "answered before the peer was ready")
	if runtime.GOOS == "linux" { // and the queue-proxy probes the path the template names
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.replicas().Replicas[0].ProxyPID))
		require.NoError(t, err)
		require.Contains(t, string(cmdline), "--engine-health-path\x00/health/ready\x00")
	}
	require.NotEmpty(t, resp.Choices[0].Message.Content)
	require.Positive(t, resp.Usage.PromptTokens)

	acc, chunks := openaitest.Accumulate(t, client.Chat.Completions.NewStreaming(ctx, peerChat("Stream something", 12)))
	require.Greater(t, chunks, 1)
	require.NotEmpty(t, acc.Choices[0].Message.Content)

	// The queue-proxy reads the peer's vLLM metrics: its cache's shape.
	require.Eventually(t, func() bool {
		reps := p.replicas().Replicas
		return len(reps) == 1 && reps[0].Stats != nil && reps[0].Stats.Engine.NumGPUBlocks == 64 && reps[0].Stats.Engine.BlockSize == 16
	}, 20*time.Second, 20*time.Millisecond)
}

// The peer's own KV events feed the activator's prefix index: requests that
// share a prefix go to the replica whose engine reported holding it (the
// activator's keys, from the engine's /tokenize, are the keys of the
// engine's events), and the index follows the engine's evictions.
func TestPeerEngineKVEventsFeedTheIndex(t *testing.T) {
	p := startLocal(t, peerService(peerengine.Binary(t), 2, 2))
	client := sdk(p)
	ctx := context.Background()
	require.Eventually(t, func() bool {
		reps := p.replicas().Replicas
		return len(reps) == 2 && reps[0].State == "Ready" && reps[1].State == "Ready" &&
			reps[0].PrefixIndex != nil && reps[1].PrefixIndex != nil
	}, 60*time.Second, 20*time.Millisecond, "two ready replicas")

	requests := func() map[string]uint64 {
		out := map[string]uint64{}
		for _, r := range p.replicas().Replicas {
			if r.Stats != nil {
				out[r.Name] = r.Stats.Requests
			}
		}
		return out
	}
	replica := func(name string) local.ReplicaStatus {
		for _, r := range p.replicas().Replicas {
			if r.Name == name {
				return r
			}
		}
		t.Fatalf("no replica %s", name)
		return local.ReplicaStatus{}
	}
	// served sends a chat and returns the replica that served it.
	served := func(content string) string {
		before := requests()
		_, err := client.Chat.Completions.New(ctx, peerChat(content, 2))
		require.NoError(t, err)
		var who string
		require.Eventually(t, func() bool {
			for name, n := range requests() {
				if n > before[name] {
					who = name
					return true
				}
			}
			return false
		}, 10*time.Second, 10*time.Millisecond)
		return who
	}

	prefix := strings.Repeat("the shared system prompt of this group says many things ", 12)
	holder := served(prefix + "first question")
	require.Eventually(t, func() bool { return replica(holder).PrefixIndex.Blocks > 0 }, 10*time.Second, 10*time.Millisecond,
		"the holder's engine reported its blocks")
	for i := range 6 {
		require.Equal(t, holder, served(fmt.Sprintf("%squestion number %d", prefix, i)),
			"request %d sharing the prefix went elsewhere", i)
	}

	// Many other prompts: each engine's 64 blocks overflow and it evicts.
	for i := range 40 {
		_, err := client.Chat.Completions.New(ctx, peerChat(fmt.Sprintf("unrelated prompt %d: %s", i, strings.Repeat(fmt.Sprintf("topic%d filler words ", i), 40)), 2))
		require.NoError(t, err)
	}
	for _, r := range p.replicas().Replicas {
		removed, _ := scrape(t, "http://"+r.Address+"/kvasir/metrics", "kvasir_queueproxy_kv_events_total", map[string]string{"type": "removed"})
		require.Positive(t, removed, "replica %s: the engine evicted", r.Name)
		skipped, _ := scrape(t, "http://"+r.Address+"/kvasir/metrics", "kvasir_queueproxy_kv_events_skipped_blocks_total", map[string]string{"reason": "unknown_parent"})
		require.Zero(t, skipped, "replica %s: every stored block was keyed", r.Name)
		// The activator's index holds what the engine holds, never more
		// than its cache.
		require.Eventually(t, func() bool {
			held, _ := scrape(t, "http://"+r.Address+"/kvasir/metrics", "kvasir_queueproxy_kv_model_blocks", nil)
			info := replica(r.Name).PrefixIndex
			return info != nil && info.Blocks == int(held) && info.Blocks <= 64
		}, 10*time.Second, 10*time.Millisecond, "replica %s: index and engine agree", r.Name)
	}
}

// The peer's own metrics drive the autoscaler: its waiting queue
// (vllm:num_requests_waiting, five sequences run at once) asks for a second
// replica.
func TestPeerEngineWaitingQueueScalesUp(t *testing.T) {
	doc := strings.Replace(peerService(peerengine.Binary(t), 1, 2),
		"target: {concurrency: 64}", "target: {waitingRequests: 2}, stableWindow: 2s", 1)
	doc = strings.Replace(doc, `"--inter-token-latency", "1ms"`, `"--inter-token-latency", "50ms"`, 1)
	p := startLocal(t, doc)
	client := sdk(p)
	labels := map[string]string{"namespace": "default", "service": "peer", "revision": "peer-00001"}
	require.Eventually(t, func() bool {
		ready, ok := p.metric("kvasir_revision_ready_replicas", labels)
		return ok && ready == 1
	}, 60*time.Second, 20*time.Millisecond)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 20)
	for i := range 20 {
		go func() {
			_, err := client.Chat.Completions.New(ctx, peerChat(fmt.Sprintf("long answer %d", i), 400))
			done <- err
		}()
	}
	waiting := 0.0 // the most the peer's vllm:num_requests_waiting read, as Kvasir saw it
	require.Eventually(t, func() bool {
		for _, r := range p.replicas().Replicas {
			if r.Stats != nil {
				waiting = max(waiting, r.Stats.Engine.Waiting)
			}
		}
		desired, ok := p.metric("kvasir_revision_desired_replicas", labels)
		return ok && desired == 2
	}, 30*time.Second, 20*time.Millisecond, "the engine's waiting queue did not scale the revision up")
	require.GreaterOrEqual(t, waiting, 2.0, "scaled up without the engine's waiting queue over the target")
	cancel()
	for range 20 {
		<-done
	}
}
