package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"
)

const pdFleet = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--time-scale=20]}
    roles:
      prefill: {scaling: {minScale: 1, maxScale: 1}}
      decode: {scaling: {minScale: 1, maxScale: 1}}
    scaling: {minScale: 1, maxScale: 1}
`

// A disaggregated model through kvasir local, as a user tries it: the
// official SDK gets answers; the first prompt is prefilled on the prefill
// replica and decoded on the decode replica, and the same prefix again is
// prefilled by the decode replica, which received its KV.
func TestPrefillDecodeThroughLocal(t *testing.T) {
	p := startLocal(t, pdFleet)
	labels := func(role string) map[string]string {
		return map[string]string{"namespace": "default", "service": "demo", "revision": "demo-00001", "role": role}
	}
	require.Eventually(t, func() bool {
		pre, ok1 := p.metric("kvasir_revision_ready_replicas", labels("prefill"))
		dec, ok2 := p.metric("kvasir_revision_ready_replicas", labels("decode"))
		return ok1 && ok2 && pre == 1 && dec == 1
	}, 60*time.Second, 20*time.Millisecond)

	system := strings.Repeat("A long system prompt shared by both questions. ", 60)
	client := sdk(p)
	ask := func(q string) *openai.ChatCompletion {
		resp, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model:     "demo",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(system), openai.UserMessage(q)},
			MaxTokens: openai.Int(6),
		})
		require.NoError(t, err)
		require.Equal(t, int64(6), resp.Usage.CompletionTokens)
		return resp
	}
	first := ask("first question")
	require.Zero(t, first.Usage.PromptTokensDetails.CachedTokens, "the decode replica had nothing local before the transfer")
	remote := map[string]string{"namespace": "default", "service": "demo", "revision": "demo-00001", "prefill": "remote"}
	n, ok := p.metric("kvasir_activator_pd_requests_total", remote)
	require.True(t, ok)
	require.Equal(t, 1.0, n)

	// The decode replica's queue-proxy reports the transferred prefix; then
	// the same prefix is prefilled locally.
	local := map[string]string{"namespace": "default", "service": "demo", "revision": "demo-00001", "prefill": "local"}
	require.Eventually(t, func() bool {
		second := ask("second question")
		if second.Usage.PromptTokensDetails.CachedTokens == 0 {
			return false
		}
		n, ok := p.metric("kvasir_activator_pd_requests_total", local)
		return ok && n >= 1
	}, 30*time.Second, 50*time.Millisecond)
}

// A disaggregated model at zero: the first request wakes the decode role and
// the prefill role with it; later prompts are prefilled remotely; idle, both
// roles go back to zero together.
func TestPrefillDecodeFromAndToZero(t *testing.T) {
	p := startLocal(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  template:
    engine: {type: sim, args: [--time-scale=20]}
    roles:
      prefill: {scaling: {minScale: 0, maxScale: 1}}
      decode: {scaling: {minScale: 0, maxScale: 1}}
    scaling: {minScale: 0, maxScale: 1, initialScale: 0, stableWindow: 4s, scaleToZeroGracePeriod: 2s}
`)
	labels := func(role string) map[string]string {
		return map[string]string{"namespace": "default", "service": "demo", "revision": "demo-00001", "role": role}
	}
	client := sdk(p)
	ask := func(system string) {
		_, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model:     "demo",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(system), openai.UserMessage("q")},
			MaxTokens: openai.Int(4),
		})
		require.NoError(t, err)
	}
	ask(strings.Repeat("First system prompt. ", 60)) // at zero
	require.Eventually(t, func() bool {
		n, ok := p.metric("kvasir_revision_ready_replicas", labels("prefill"))
		return ok && n == 1
	}, 60*time.Second, 20*time.Millisecond, "the prefill role woke with the decode role")
	ask(strings.Repeat("Another system prompt. ", 60))
	remote := map[string]string{"namespace": "default", "service": "demo", "revision": "demo-00001", "prefill": "remote"}
	n, ok := p.metric("kvasir_activator_pd_requests_total", remote)
	require.True(t, ok)
	require.GreaterOrEqual(t, n, 1.0)

	require.Eventually(t, func() bool {
		pre, _ := p.metric("kvasir_revision_desired_replicas", labels("prefill"))
		dec, _ := p.metric("kvasir_revision_desired_replicas", labels("decode"))
		return pre == 0 && dec == 0
	}, 60*time.Second, 50*time.Millisecond, "both roles back to zero")
}
