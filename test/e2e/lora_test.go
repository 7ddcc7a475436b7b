package e2e

import (
	"context"
	"testing"

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
