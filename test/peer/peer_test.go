// Package peer_test runs a vLLM-compatible engine nobody here wrote,
// llm-d-inference-sim v0.10.2 (github.com/llm-d/llm-d-inference-sim, pinned
// in hack/peer/go.mod and built from the Go module proxy by
// hack/peer-assets.sh into ~/.cache/kvasir/peer/), and checks what Kvasir
// relies on against the real process: readiness, model cards, the OpenAI
// API through the official SDK, its ZMQ KV-cache events decoded by Kvasir's
// own pkg/kvevents, and its /tokenize agreeing with those events.
//
// What v0.10.2 accepts and does (read from its source, pkg/common/parser.go,
// pkg/common/config.go, pkg/communication/http.go, pkg/kv-cache/,
// pkg/common/publisher.go, pkg/tokenizer/; and checked here):
//
//	--port N                      HTTP (and gRPC, through cmux) port; default 8000. It listens on
//	                              tcp4 ":N", every IPv4 interface: there is no --host.
//	--model M                     the base model (required; env SIM_MODEL when the flag is absent).
//	                              Names the KV-event topic and the LoRAs' base_model_name.
//	--served-model-name A B ...   the names the API accepts and /v1/models lists (space-separated
//	                              values up to the next --flag); default [M]. The first one is the
//	                              LoRAs' parent, the "model" of every base-model response (a request
//	                              for another served name is answered under the first one, as vLLM
//	                              does) and the metrics' label.
//	--max-model-len N             context window; default 1024. A prompt plus max_tokens over it:
//	                              400 "This model's maximum context length is N tokens...".
//	--enable-kvcache              turns the prefix cache and its events on (plain bool flag).
//	                              Needs env POD_IP (any string; only used in the topic), else the
//	                              process logs "IP should be defined in the environment (POD_IP)"
//	                              and exits, with status 0.
//	--kv-cache-size N             cache capacity in blocks; default 1024. A request needing more
//	                              blocks than are free or evictable fails with 500 "the kv cache
//	                              does not have sufficient capacity to store this request".
//	--block-size N                tokens per block: 8, 16 (default), 32, 64 or 128 only.
//	--hash-seed S                 seed of its block hashes (env PYTHONHASHSEED otherwise).
//	--zmq-endpoint E              where events go; default tcp://127.0.0.1:5557. The peer CONNECTS
//	                              (a PUB socket that dials, retrying every second forever), it
//	                              never binds: the subscriber must bind. "" disables publishing.
//	                              Topic: "kv@<POD_IP>@<--model>" (the base model, not the served
//	                              name). Frames: topic, 8-byte big-endian sequence number starting
//	                              at 1 (vLLM starts at 0), msgpack [ts, [events...], dp_rank=0].
//	--event-batch-size N          events per message; default 16. A partial batch is flushed by a
//	                              fixed 1 s timer, so events lag up to 1 s unless N is 1.
//	--use-vllm-map-event-format   events as msgpack maps with named fields (vLLM PR #42892); the
//	                              default is vLLM's positional arrays. In the array form a block
//	                              without a parent carries parent_block_hash 0, not nil.
//	--force-dummy-tokenizer       always its simulated tokenizer. WITHOUT it the peer asks
//	                              https://huggingface.co/api/models/<M> at start (a DNS lookup is
//	                              attempted even offline; with no answer it falls back to the dummy
//	                              tokenizer) and, for a model that exists there, sends every
//	                              prompt to a vLLM render service (--render-url, default
//	                              http://localhost:8082). With it, nothing leaves the machine
//	                              (checked with strace: no connect() besides the ZMQ endpoint).
//	                              The dummy tokenizer splits text with a regular expression (words
//	                              and single punctuation marks, each with its trailing
//	                              whitespace) and a token id is the FNV-1a 32 hash of that piece;
//	                              chat messages are rendered as "### <role>: <content>\n" each.
//	--time-to-first-token D       TTFT, e.g. 100ms (--time-to-first-token-std-dev, at most 30%);
//	                              --prefill-overhead / --prefill-time-per-token when TTFT is 0.
//	--inter-token-latency D       time per output token (--inter-token-latency-std-dev, at most 30%).
//	--startup-duration D          /health/ready answers 503 for D after the server starts.
//	--mode random|echo            echo answers with the last message's text; default random.
//	--lora-modules J ...          static LoRAs, each a JSON {"name","path","base_model_name"}
//	                              (base_model_name must be --model when given); --max-loras N
//	                              (default 1), --max-cpu-loras N.
//	POST /v1/load_lora_adapter    {"lora_name","lora_path"}: 200 with an empty body; it never
//	                              checks the path. POST /v1/unload_lora_adapter {"lora_name"}.
//	GET /health                   200 as soon as the port accepts, even during --startup-duration.
//	GET /health/ready             503 during --startup-duration, then 200: the true readiness.
//	GET /ready                    200 always (deprecated, logs so once).
//	GET /v1/models                {"object":"list","data":[{id, object:"model", created,
//	                              owned_by:"vllm", root, parent, max_model_len}]}: one card per
//	                              served name (root = --model, parent = null), then one per LoRA
//	                              (root = its path, parent = the first served name).
//	POST /tokenize                {"model", "prompt"} or {"model", "messages"} (both: 400); the
//	                              model is not checked. Answers {"max_model_len", "count",
//	                              "tokens": [ids], "token_strs": null}, with the token ids of the
//	                              same rendering the chat endpoint uses for the KV cache.
//	GET /metrics                  vllm:num_requests_running, vllm:num_requests_waiting,
//	                              vllm:kv_cache_usage_perc (blocks held by running requests only),
//	                              vllm:prompt_tokens_total, vllm:generation_tokens_total,
//	                              vllm:request_success_total{finish_reason}, histograms
//	                              vllm:time_to_first_token_seconds, vllm:inter_token_latency_seconds,
//	                              vllm:time_per_output_token_seconds, vllm:e2e_request_latency_seconds,
//	                              vllm:request_{queue,prefill,decode,inference}_time_seconds, ...; all
//	                              labelled model_name = the first served name, LoRA requests
//	                              included; a histogram appears with its first observation, and
//	                              every value is updated asynchronously, a moment after the
//	                              response. vllm:prefix_cache_hits and vllm:prefix_cache_queries (in
//	                              tokens) only with --enable-kvcache. Unlabelled by model:
//	                              vllm:cache_config_info{block_size,num_gpu_blocks} (= --block-size,
//	                              --kv-cache-size, also with the cache off) and
//	                              vllm:lora_requests_info{max_lora,running_lora_adapters,
//	                              waiting_lora_adapters}.
//
// Its KV events: a request's prompt blocks are stored when it starts (one
// BlockStored with only the blocks not already cached, whose parent is the
// last cached block of the request), never the generated tokens' blocks;
// blocks stay cached after the request and are evicted (BlockRemoved) oldest
// first (an unloaded LoRA's before the rest) when a new block needs room.
// Its block hashes are llm-d-kv-cache's (FNV-64a over canonical CBOR, seeded
// with --hash-seed and the request's model: the first served name or the
// LoRA), not vLLM's; the token ids in the events are what Kvasir hashes. A
// LoRA request's BlockStored carries lora_name and lora_id (1-based).
//
// A failed config (bad flag value, missing POD_IP) exits with status 0, so
// readiness, not the exit status, tells whether it started.
package peer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

func sdk(p *peer) openai.Client {
	return openai.NewClient(option.WithBaseURL(p.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

// words returns n distinct words starting with prefix.
func words(prefix string, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return strings.Join(w, " ")
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func sdkMessages(msgs []message) []openai.ChatCompletionMessageParamUnion {
	var out []openai.ChatCompletionMessageParamUnion
	for _, m := range msgs {
		switch m.Role {
		case "system":
			out = append(out, openai.SystemMessage(m.Content))
		case "user":
			out = append(out, openai.UserMessage(m.Content))
		default:
			panic(m.Role)
		}
	}
	return out
}

// chat sends one chat completion with the SDK and waits for all of it.
func chat(t *testing.T, p *peer, model string, msgs []message, maxTokens int64) *openai.ChatCompletion {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := sdk(p)
	c, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: model, Messages: sdkMessages(msgs), MaxTokens: openai.Int(maxTokens)})
	require.NoError(t, err)
	return c
}

type tokenizeResponse struct {
	MaxModelLen int      `json:"max_model_len"`
	Count       int      `json:"count"`
	Tokens      []uint32 `json:"tokens"`
	TokenStrs   []any    `json:"token_strs"`
}

// tokenize asks the peer's /tokenize for the token ids of msgs.
func tokenize(t *testing.T, p *peer, model string, msgs []message) []uint32 {
	t.Helper()
	code, body := p.post(t, "/tokenize", map[string]any{"model": model, "messages": msgs})
	require.Equal(t, http.StatusOK, code, "%s", body)
	var r tokenizeResponse
	require.NoError(t, json.Unmarshal(body, &r))
	require.Equal(t, len(r.Tokens), r.Count)
	return r.Tokens
}

// metrics returns the peer's /metrics text.
func metrics(t *testing.T, p *peer) string {
	t.Helper()
	resp, err := http.Get(p.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

type modelCard struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	OwnedBy     string  `json:"owned_by"`
	Root        string  `json:"root"`
	Parent      *string `json:"parent"`
	MaxModelLen int     `json:"max_model_len"`
}

func models(t *testing.T, p *peer) map[string]modelCard {
	t.Helper()
	var list struct {
		Object string      `json:"object"`
		Data   []modelCard `json:"data"`
	}
	p.get(t, "/v1/models", &list)
	require.Equal(t, "list", list.Object)
	m := map[string]modelCard{}
	for _, c := range list.Data {
		m[c.ID] = c
	}
	return m
}

// TestReadinessModelsLoRAAndMetrics: /health answers 200 from the start while
// /health/ready holds 503 for --startup-duration; /v1/models carries vLLM's
// card fields for served names and LoRAs, static and loaded at run time.
func TestReadinessModelsLoRAAndMetrics(t *testing.T) {
	const startup = 1500 * time.Millisecond
	start := time.Now()
	p := startPeer(t, nil, "--model", "peer-base", "--served-model-name", "peer-model", "peer-alias",
		"--max-model-len", "2048", "--startup-duration", startup.String(), "--max-loras", "2",
		"--lora-modules", `{"name":"sql-lora","path":"/adapters/sql","base_model_name":"peer-base"}`)

	p.poll(t, "/health to answer 200", func() bool { return p.status("/health") == http.StatusOK })
	listening := time.Since(start)
	require.Equal(t, http.StatusServiceUnavailable, p.status("/health/ready"),
		"/health/ready during --startup-duration (the port has accepted for %s)", listening)
	require.Equal(t, http.StatusOK, p.status("/ready"), "the deprecated /ready is 200 from the start")
	p.waitReady(t)
	ready := time.Since(start)
	require.GreaterOrEqual(t, ready, startup)
	t.Logf("/health 200 after %s, /health/ready 200 after %s (--startup-duration %s)",
		listening.Round(time.Millisecond), ready.Round(time.Millisecond), startup)

	cards := models(t, p)
	for _, id := range []string{"peer-model", "peer-alias"} {
		require.Equal(t, modelCard{ID: id, Object: "model", OwnedBy: "vllm", Root: "peer-base", MaxModelLen: 2048}, cards[id])
	}
	parent := "peer-model"
	require.Equal(t, modelCard{ID: "sql-lora", Object: "model", OwnedBy: "vllm", Root: "/adapters/sql", Parent: &parent,
		MaxModelLen: 2048}, cards["sql-lora"])
	require.Len(t, cards, 3)

	// The SDK's Model keeps the vLLM fields among its extra fields.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := sdk(p)
	page, err := client.Models.List(ctx)
	require.NoError(t, err)
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
		require.Equal(t, "2048", m.JSON.ExtraFields["max_model_len"].Raw())
	}
	require.ElementsMatch(t, []string{"peer-model", "peer-alias", "sql-lora"}, ids)

	// LoRA loaded at run time, served, listed, then unloaded.
	code, body := p.post(t, "/v1/load_lora_adapter", map[string]string{"lora_name": "rt-lora", "lora_path": "/adapters/rt"})
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, body)
	require.Equal(t, modelCard{ID: "rt-lora", Object: "model", OwnedBy: "vllm", Root: "/adapters/rt", Parent: &parent,
		MaxModelLen: 2048}, models(t, p)["rt-lora"])
	c := chat(t, p, "rt-lora", []message{{"user", "hello"}}, 4)
	require.Equal(t, "rt-lora", c.Model)
	c = chat(t, p, "peer-alias", []message{{"user", "hello"}}, 4)
	require.Equal(t, "peer-model", c.Model, "as vLLM, it answers with the first served name, not the alias")
	code, _ = p.post(t, "/v1/unload_lora_adapter", map[string]string{"lora_name": "rt-lora"})
	require.Equal(t, http.StatusOK, code)
	require.NotContains(t, models(t, p), "rt-lora")

	// Metrics, updated asynchronously: every series under the first served
	// name, LoRA requests included.
	// The random answers may stop before max_tokens, so token counts vary.
	want := []string{
		`vllm:num_requests_running{model_name="peer-model"} 0`,
		`vllm:num_requests_waiting{model_name="peer-model"} 0`,
		`vllm:kv_cache_usage_perc{model_name="peer-model"} 0`,
		`vllm:cache_config_info{block_size="16",num_gpu_blocks="1024"} 1`, // with the cache off too
		`vllm:lora_requests_info{max_lora="2",running_lora_adapters="rt-lora",waiting_lora_adapters=""} `,
		`vllm:request_success_total{finish_reason="`,
		`vllm:prompt_tokens_total{model_name="peer-model"} `,
		`vllm:generation_tokens_total{model_name="peer-model"} `,
		`vllm:time_to_first_token_seconds_count{model_name="peer-model"} 2`,
		`vllm:e2e_request_latency_seconds_count{model_name="peer-model"} 2`,
	}
	text := waitMetrics(t, p, want...)
	require.NotContains(t, text, "vllm:prefix_cache_hits{", "only with --enable-kvcache")
}

// waitMetrics waits until the peer's /metrics has a line starting with each
// of want, and returns the text.
func waitMetrics(t *testing.T, p *peer, want ...string) string {
	t.Helper()
	var text string
	var missing []string
	within(timeout, func() bool {
		text, missing = metrics(t, p), nil
		for _, w := range want {
			if !strings.Contains(text, "\n"+w) {
				missing = append(missing, w)
			}
		}
		return len(missing) == 0
	})
	require.Empty(t, missing, "in /metrics:\n%s", text)
	return text
}

// TestChatWithOpenAISDK: plain and streamed chat, usage, the latencies it is
// told, and the context-window error as the SDK sees it.
func TestChatWithOpenAISDK(t *testing.T) {
	const ttft, itl = 100 * time.Millisecond, 10 * time.Millisecond
	p := startPeer(t, nil, "--model", "peer-model", "--mode", "echo", "--max-model-len", "64",
		"--time-to-first-token", ttft.String(), "--inter-token-latency", itl.String())
	p.waitReady(t)
	client := sdk(p)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	msgs := []message{{"user", "The quick brown fox jumps over the lazy dog."}}
	promptTokens := len(tokenize(t, p, "peer-model", msgs))

	c, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "peer-model", Messages: sdkMessages(msgs), MaxTokens: openai.Int(32)})
	require.NoError(t, err)
	require.Equal(t, "peer-model", c.Model)
	require.Len(t, c.Choices, 1)
	require.Equal(t, msgs[0].Content, c.Choices[0].Message.Content, "echo mode answers with the last message")
	require.Equal(t, "stop", c.Choices[0].FinishReason)
	require.EqualValues(t, promptTokens, c.Usage.PromptTokens, "usage counts the /tokenize tokens")
	require.Positive(t, c.Usage.CompletionTokens)

	start := time.Now()
	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: "peer-model", Messages: sdkMessages(msgs), MaxTokens: openai.Int(32),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}})
	var acc openai.ChatCompletionAccumulator
	var first time.Duration
	chunks := 0
	for stream.Next() {
		chunk := stream.Current()
		require.True(t, acc.AddChunk(chunk))
		if first == 0 && len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			first = time.Since(start)
		}
		chunks++
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	total := time.Since(start)
	require.Equal(t, msgs[0].Content, acc.Choices[0].Message.Content)
	require.Equal(t, "stop", acc.Choices[0].FinishReason)
	require.EqualValues(t, promptTokens, acc.Usage.PromptTokens)
	n := acc.Usage.CompletionTokens
	require.Greater(t, chunks, int(n), "one chunk per token, plus the role, finish and usage chunks")
	require.GreaterOrEqual(t, first, ttft, "time to first token")
	require.GreaterOrEqual(t, total, ttft+time.Duration(n-1)*itl, "TTFT plus the inter-token latencies")
	t.Logf("streamed %d tokens in %d chunks: first content after %s, all after %s", n, chunks,
		first.Round(time.Millisecond), total.Round(time.Millisecond))

	// Its latency histograms saw the same: a TTFT per request, an
	// inter-token latency per token after the first.
	waitMetrics(t, p, `vllm:time_to_first_token_seconds_count{model_name="peer-model"} 2`+"\n",
		fmt.Sprintf(`vllm:inter_token_latency_seconds_count{model_name="peer-model"} %d`+"\n", 2*(n-1)))

	// Over --max-model-len: vLLM's 400, which the SDK surfaces as an *openai.Error.
	_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "peer-model", Messages: sdkMessages([]message{{"user", words("w", 80)}})})
	var apiErr *openai.Error
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusBadRequest, apiErr.StatusCode)
	require.Contains(t, apiErr.Message, "maximum context length is 64 tokens")

	// An unknown model is vLLM's 404.
	_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "no-such-model", Messages: sdkMessages(msgs)})
	require.ErrorAs(t, err, &apiErr)
	require.Equal(t, http.StatusNotFound, apiErr.StatusCode)
}

// kvPeer starts the peer with its KV cache on, publishing to a Kvasir
// subscriber, and waits until events flow: the peer connects in the
// background and a PUB socket drops what it publishes before the
// subscription reaches it, so it sends warm-up requests (each with a new
// first block) until one's BlockStored arrives.
//
// It returns how many warm-up requests' events were lost (each stored one
// block, which may be evicted later without the test having seen it stored).
func kvPeer(t *testing.T, blockSize, cacheBlocks int, extra ...string) (*peer, *events, *kvevents.Subscriber, int) {
	t.Helper()
	endpoint, ev, sub := subscribe(t, "kv@127.0.0.1@peer-base")
	args := append([]string{"--model", "peer-base", "--served-model-name", "peer-model",
		"--enable-kvcache", "--block-size", fmt.Sprint(blockSize), "--kv-cache-size", fmt.Sprint(cacheBlocks),
		"--zmq-endpoint", endpoint, "--event-batch-size", "1", "--max-model-len", "4096"}, extra...)
	p := startPeer(t, []string{"POD_IP=127.0.0.1"}, args...)
	p.waitReady(t)
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		// One full block: "### user: " is 5 tokens, then a word a token.
		chat(t, p, "peer-model", []message{{"user", words(fmt.Sprintf("warmup%dx", i), blockSize)}}, 1)
		if within(300*time.Millisecond, func() bool { return len(ev.stored()) > 0 }) {
			t.Logf("KV events flow after %d warm-up request(s)", i+1)
			return p, ev, sub, i
		}
		require.True(t, time.Now().Before(deadline), "no KV event arrived")
	}
}

// waitStored waits until more than n BlockStored events have arrived and
// returns event n.
func waitStored(t *testing.T, p *peer, ev *events, n int) kvevents.BlockStored {
	t.Helper()
	p.poll(t, fmt.Sprintf("BlockStored #%d", n+1), func() bool { return len(ev.stored()) > n })
	return ev.stored()[n]
}

// TestKVEventsAndTokenize: the peer's events decode with Kvasir's decoder,
// in both of vLLM's layouts; a shared prefix is stored once and the second
// request's event links to it; the token ids in the events are those of
// /tokenize, so Kvasir's block hashes of the events and of /tokenize agree.
func TestKVEventsAndTokenize(t *testing.T) {
	for _, format := range []string{"array", "map"} {
		t.Run(format, func(t *testing.T) {
			var extra []string
			if format == "map" {
				extra = append(extra, "--use-vllm-map-event-format")
			}
			extra = append(extra, "--lora-modules", `{"name":"sql-lora","path":"/adapters/sql"}`)
			const bs = 16
			p, ev, sub, _ := kvPeer(t, bs, 1024, extra...)

			system := message{"system", "You are a careful assistant. " + words("sys", 70)}
			msgsA := []message{system, {"user", words("alpha", 30)}}
			msgsB := []message{system, {"user", words("beta", 30)}}
			tokA, tokB := tokenize(t, p, "peer-model", msgsA), tokenize(t, p, "peer-model", msgsB)
			common := 0
			for common < min(len(tokA), len(tokB)) && tokA[common] == tokB[common] {
				common++
			}
			k := common / bs // blocks the two prompts share
			nA, nB := len(tokA)/bs, len(tokB)/bs
			require.GreaterOrEqual(t, k, 4)
			require.Greater(t, nB, k)

			n0 := len(ev.stored())
			chat(t, p, "peer-model", msgsA, 2)
			a := waitStored(t, p, ev, n0)
			require.Len(t, a.Hashes, nA, "every full prompt block, and no partial one")
			require.Equal(t, tokA[:nA*bs], a.TokenIDs, "the event carries /tokenize's token ids")
			require.Equal(t, bs, a.BlockSize)
			require.Equal(t, "GPU", a.Medium)
			require.Nil(t, a.LoRAID)
			require.Empty(t, a.LoRAName)
			if format == "map" {
				require.Nil(t, a.Parent, "no parent: nil in the map layout")
			} else {
				require.Equal(t, kvevents.IntHash(0), *a.Parent, "no parent: 0 in the array layout, not nil")
			}

			chat(t, p, "peer-model", msgsB, 2)
			b := waitStored(t, p, ev, n0+1)
			require.Len(t, b.Hashes, nB-k, "only the blocks after the shared prefix are stored")
			require.Equal(t, tokB[k*bs:nB*bs], b.TokenIDs)
			require.NotNil(t, b.Parent)
			require.Equal(t, a.Hashes[k-1], *b.Parent, "linked to the last shared block")
			for _, h := range b.Hashes {
				require.NotContains(t, a.Hashes, h)
			}

			// What Kvasir's precise prefix mode computes: its own chained
			// hashes of the token ids the events carry, with B's prefix taken
			// from the event its parent links to, equal the hashes of what the
			// router gets from /tokenize.
			kvA := prompt.AppendTokenBlockHashes(nil, a.TokenIDs, bs)
			require.Equal(t, prompt.AppendTokenBlockHashes(nil, tokA, bs), kvA)
			link := slices.Index(a.Hashes, *b.Parent) + 1
			kvB := prompt.AppendTokenBlockHashes(nil, append(slices.Clone(a.TokenIDs[:link*bs]), b.TokenIDs...), bs)
			require.Equal(t, prompt.AppendTokenBlockHashes(nil, tokB, bs), kvB)
			require.Equal(t, kvA[:k], kvB[:k])
			require.NotEqual(t, kvA[k], kvB[k])

			// A again is all cache hits: no BlockStored. The next event is C's.
			chat(t, p, "peer-model", msgsA, 2)
			msgsC := []message{{"user", words("gamma", 2*bs)}}
			tokC := tokenize(t, p, "peer-model", msgsC)
			chat(t, p, "peer-model", msgsC, 2)
			c := waitStored(t, p, ev, n0+2)
			require.Equal(t, tokC[:len(tokC)/bs*bs], c.TokenIDs, "A repeated stored nothing")
			// The hits of B (the shared prefix) and of A repeated (all of it),
			// counted in tokens; the counter is updated asynchronously.
			waitMetrics(t, p, fmt.Sprintf(`vllm:prefix_cache_hits{model_name="peer-model"} %d`+"\n", k*bs+nA*bs))

			// A LoRA's blocks: hashed apart from the base model's, and tagged.
			chat(t, p, "sql-lora", msgsA, 2)
			l := waitStored(t, p, ev, n0+3)
			require.Equal(t, a.TokenIDs, l.TokenIDs, "same tokens, stored again for the LoRA")
			require.Equal(t, "sql-lora", l.LoRAName)
			require.NotNil(t, l.LoRAID)
			require.Equal(t, 1, *l.LoRAID)
			for _, h := range l.Hashes {
				require.NotContains(t, a.Hashes, h)
			}

			_, batches := ev.all()
			require.NotEmpty(t, batches)
			for i, bt := range batches {
				require.Equal(t, "kv@127.0.0.1@peer-base", bt.Topic, "the topic names --model, not the served name")
				require.Equal(t, 0, bt.DPRank)
				require.InDelta(t, float64(time.Now().Unix()), bt.Time, 60)
				if i > 0 {
					require.Equal(t, batches[i-1].Seq+1, bt.Seq)
				}
			}
			require.Zero(t, sub.Gaps())
			require.Zero(t, sub.Malformed())
		})
	}
}

// TestKVEventsEviction: with a tiny cache, finished requests' blocks are
// evicted oldest first and reported; a request bigger than the whole cache
// fails.
func TestKVEventsEviction(t *testing.T) {
	const bs, capacity = 8, 6
	p, ev, _, lost := kvPeer(t, bs, capacity)

	// Four requests of three full blocks each, one after another: the
	// cache keeps the last two.
	var reqs [][]kvevents.BlockHash
	for i := range 4 {
		msgs := []message{{"user", words(fmt.Sprintf("evict%dx", i), 3*bs-5)}}
		tok := tokenize(t, p, "peer-model", msgs)
		require.Len(t, tok, 3*bs)
		n := len(ev.stored())
		chat(t, p, "peer-model", msgs, 1)
		s := waitStored(t, p, ev, n)
		require.Equal(t, tok, s.TokenIDs)
		reqs = append(reqs, s.Hashes)
	}
	evicted := append(slices.Clone(reqs[0]), reqs[1]...)
	p.poll(t, "BlockRemoved for the first two requests' blocks", func() bool {
		removed := ev.removed()
		for _, h := range evicted {
			if !slices.Contains(removed, h) {
				return false
			}
		}
		return true
	})
	var stored []kvevents.BlockHash
	for _, s := range ev.stored() {
		stored = append(stored, s.Hashes...)
	}
	removed := ev.removed()
	unseen := 0
	for i, h := range removed {
		require.NotContains(t, removed[:i], h, "a block is removed once")
		if !slices.Contains(stored, h) {
			unseen++
		}
	}
	require.LessOrEqual(t, unseen, lost, "only stored blocks are removed (bar the warm-up blocks stored before events flowed)")
	for _, h := range append(slices.Clone(reqs[2]), reqs[3]...) {
		require.NotContains(t, removed, h, "the last two requests' blocks stay")
	}
	waitMetrics(t, p, `vllm:cache_config_info{block_size="8",num_gpu_blocks="6"} 1`)

	// More blocks than the cache holds: 500, not a wait.
	code, body := p.post(t, "/v1/chat/completions", map[string]any{"model": "peer-model", "max_tokens": 1,
		"messages": []message{{"user", words("huge", (capacity+1)*bs)}}})
	require.Equal(t, http.StatusInternalServerError, code)
	require.Contains(t, string(body), "does not have sufficient capacity")
}

// TestFailedStartExitsZero: a configuration the peer refuses (here the KV
// cache without POD_IP) is logged and the process exits with status 0, so a
// supervisor must judge by readiness, not by the exit status.
func TestFailedStartExitsZero(t *testing.T) {
	p := startPeer(t, []string{"POD_IP="}, "--model", "peer-model", "--enable-kvcache")
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatal("the peer did not exit")
	}
	require.NoError(t, p.err, "exit status 0")
	require.Contains(t, p.logs(), "IP should be defined in the environment (POD_IP)")
}
