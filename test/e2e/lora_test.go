package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/stretchr/testify/require"
)

// A LoRA adapter declared in spec.loraAdapters is served by kvasir local's
// simulator and reached by naming it as the model, with the official SDK.
func TestLoRAAdapterThroughLocal(t *testing.T) {
	p := startLocal(t, `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  loraAdapters: [sql-lora]
  routing: {plugins: [{name: lora-affinity, weight: 2}, {name: least-request, weight: 1}]}
  template:
    engine: {type: sim, args: [--zero-latency]}
    scaling: {minScale: 1, maxScale: 1}
`)
	client := sdk(p)
	models, err := client.Models.List(context.Background())
	require.NoError(t, err)
	var ids []string
	for _, m := range models.Data {
		ids = append(ids, m.ID)
	}
	require.Equal(t, []string{"demo", "sql-lora"}, ids)

	resp, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:     "sql-lora",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("select 1")},
		MaxTokens: openai.Int(3),
	})
	require.NoError(t, err)
	require.Equal(t, "sql-lora", resp.Model, "the engine answered as the adapter")
	require.Equal(t, int64(3), resp.Usage.CompletionTokens)
}

const loraV1 = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  loraAdapters: [sql-lora]
  routing: {plugins: [{name: lora-affinity, weight: 2}, {name: least-request, weight: 1}]}
  template:
    engine: {type: sim, args: [--zero-latency]}
    scaling: {minScale: 1, maxScale: 1}
`

// Adapters added to spec.loraAdapters later are loaded into the running
// replicas, and removed ones unloaded: no new revision, no restart.
func TestLoRAAdaptersChangeAtRunTime(t *testing.T) {
	p := startLocal(t, loraV1)
	client := sdk(p)
	ctx := context.Background()
	require.Eventually(t, func() bool { return revisions(p)["demo-00001"] == 1 }, 60*time.Second, 20*time.Millisecond)
	enginePID := p.replicas().Replicas[0].EnginePID
	ask := func(model string) error {
		_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: model, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, MaxTokens: openai.Int(1)})
		return err
	}
	require.NoError(t, ask("sql-lora"))
	engineLists := func(name string) bool {
		for _, c := range p.replicas().Replicas[0].Stats.Engine.Models {
			if c.ID == name {
				return true
			}
		}
		return false
	}

	require.NoError(t, os.WriteFile(p.File, []byte(strings.Replace(loraV1, "[sql-lora]", "[sql-lora, chat-lora]", 1)), 0o644))
	require.Eventually(t, func() bool { return engineLists("chat-lora") }, 30*time.Second, 20*time.Millisecond,
		"the new adapter was not loaded into the running engine")
	require.NoError(t, ask("chat-lora"))

	require.NoError(t, os.WriteFile(p.File, []byte(strings.Replace(loraV1, "[sql-lora]", "[chat-lora]", 1)), 0o644))
	require.Eventually(t, func() bool { return !engineLists("sql-lora") }, 30*time.Second, 20*time.Millisecond,
		"the removed adapter was not unloaded")
	var apiErr *openai.Error
	require.ErrorAs(t, ask("sql-lora"), &apiErr)
	require.Equal(t, 404, apiErr.StatusCode, "a removed adapter is no longer served")
	require.NoError(t, ask("chat-lora"))

	require.Equal(t, map[string]int{"demo-00001": 1}, revisions(p), "no new revision")
	require.Equal(t, enginePID, p.replicas().Replicas[0].EnginePID, "the engine was not restarted")
}
