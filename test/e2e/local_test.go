package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/maxprocs"
	oai "github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/testing/openaitest"
)

// demo is a simulated model that starts at zero replicas. The simulator runs
// 20x faster than real time and "loads" for 2 simulated seconds.
const demo = `apiVersion: serving.kvasir.dev/v1alpha1
kind: ModelService
metadata: {name: demo}
spec:
  model: demo
  template:
    engine:
      type: sim
      args: ["--time-scale=20", "--startup-delay=2s"]
    scaling: {minScale: 0, maxScale: 2, initialScale: 0, target: {concurrency: 128}, scaleToZeroGracePeriod: 3s, stableWindow: 4s}
`

var demoLabels = map[string]string{"namespace": "default", "service": "demo", "revision": "demo-00001"}

func sdk(p *platform) openai.Client {
	// No SDK retries: every request must succeed on its first try.
	return openai.NewClient(option.WithBaseURL(p.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

func chatParams(content string, maxTokens int64) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:     "demo",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage(content)},
		MaxTokens: openai.Int(maxTokens),
	}
}

func requireAtZero(t *testing.T, p *platform) {
	t.Helper()
	require.Eventually(t, func() bool {
		ready, ok1 := p.metric("kvasir_revision_ready_replicas", demoLabels)
		desired, ok2 := p.metric("kvasir_revision_desired_replicas", demoLabels)
		return ok1 && ok2 && ready == 0 && desired == 0 && len(p.replicas().Replicas) == 0
	}, 60*time.Second, 50*time.Millisecond, "revision did not get back to zero")
}

func TestScaleFromZeroWithOpenAISDK(t *testing.T) {
	p := startLocal(t, demo)
	client := sdk(p)
	ctx := context.Background()

	// Series exist from the start, reading zero.
	ready, ok := p.metric("kvasir_revision_ready_replicas", demoLabels)
	require.True(t, ok, "ready replicas series exists before any traffic")
	require.Zero(t, ready)
	buffered, ok := p.metric("kvasir_activator_buffered_requests", demoLabels)
	require.True(t, ok)
	require.Zero(t, buffered)

	// 200 concurrent requests while at zero: every one succeeds.
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Chat.Completions.New(ctx, chatParams("Hello from a cold start", 8))
			if err == nil && (len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" || resp.Usage.CompletionTokens != 8) {
				err = errors.New("unexpected completion: " + resp.RawJSON())
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			t.Log(err)
		}
	}
	require.Zero(t, failed, "requests sent at zero replicas failed")

	// A plain completion and a streamed one.
	resp, err := client.Chat.Completions.New(ctx, chatParams("Say something", 12))
	require.NoError(t, err)
	require.NotEmpty(t, resp.Choices[0].Message.Content)
	require.Positive(t, resp.Usage.PromptTokens)

	acc, chunks := openaitest.Accumulate(t, client.Chat.Completions.NewStreaming(ctx, chatParams("Stream something", 12)))
	require.GreaterOrEqual(t, chunks, 12)
	require.NotEmpty(t, acc.Choices[0].Message.Content)

	// The queue-proxies measured what they served and streamed it to the
	// platform: every completion token the clients received, and the TTFT of
	// the streamed request.
	const wantTokens = n*8 + 12 + 12
	require.Eventually(t, func() bool {
		var tokens, requests, ttfts uint64
		for _, r := range p.replicas().Replicas {
			if r.Stats != nil {
				tokens += r.Stats.CompletionTokens
				requests += r.Stats.Requests
				ttfts += r.Stats.TTFTCount
			}
		}
		return tokens >= wantTokens && requests >= n+2 && ttfts >= 1
	}, 20*time.Second, 50*time.Millisecond, "queue-proxy stats did not reach the platform")

	// Idle past the grace period: back to zero, processes gone.
	requireAtZero(t, p)

	// And it wakes again, streaming, from zero.
	acc, _ = openaitest.Accumulate(t, client.Chat.Completions.NewStreaming(ctx, chatParams("Wake up again", 6)))
	require.NotEmpty(t, acc.Choices[0].Message.Content)
}

// wsMessage is one server message of the WebSocket protocol.
type wsMessage struct {
	RequestID json.RawMessage `json:"request_id"`
	Type      string          `json:"type"`
	Error     *oai.Error      `json:"error"`
	Choices   []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
}

func TestWebSocketMultiplexedAgainstSimulator(t *testing.T) {
	p := startLocal(t, demo)
	// The reference text of each request, non-streamed over HTTP.
	want := map[string]string{}
	for id, prompt := range map[string]string{`"first"`: "one prompt", `2`: "another, longer prompt here"} {
		client := sdk(p)
		resp, err := client.Chat.Completions.New(context.Background(), chatParams(prompt, 10))
		require.NoError(t, err)
		want[id] = resp.Choices[0].Message.Content
	}
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(p.URL, "http")+"/v1/chat/completions", nil)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.WriteMessage(websocket.TextMessage,
		[]byte(`{"request_id":"first","model":"demo","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"one prompt"}]}`)))
	require.NoError(t, conn.WriteMessage(websocket.TextMessage,
		[]byte(`{"request_id":2,"model":"demo","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"another, longer prompt here"}]}`)))
	got := map[string]string{}
	done := map[string]bool{}
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(60*time.Second)))
	for len(done) < 2 {
		_, raw, err := conn.ReadMessage()
		require.NoError(t, err)
		var m wsMessage
		require.NoError(t, json.Unmarshal(raw, &m), string(raw))
		require.Nil(t, m.Error, string(raw))
		id := string(m.RequestID)
		require.Contains(t, want, id, "every message carries its request_id: %s", raw)
		require.False(t, done[id], "no chunk after done: %s", raw)
		if m.Type == "done" {
			done[id] = true
			continue
		}
		for _, c := range m.Choices {
			got[id] += c.Delta.Content
		}
	}
	require.Equal(t, want, got, "chunks arrive in order per request_id")
}

func TestBadInputAndClientDisconnect(t *testing.T) {
	p := startLocal(t, strings.Replace(demo, "initialScale: 0", "initialScale: 1", 1), "--max-body-bytes", "4096")
	ctx := context.Background()
	for name, tc := range map[string]struct {
		body   string
		status int
		code   string
	}{
		"malformed JSON": {`{"model":"demo","messages":[`, 400, "invalid_json"},
		"missing model":  {`{"messages":[{"role":"user","content":"hi"}]}`, 400, "model_required"},
		"unknown model":  {`{"model":"gpt-9","messages":[]}`, 404, "model_not_found"},
		"oversized body": {`{"model":"demo","messages":[{"role":"user","content":"` + strings.Repeat("a", 8192) + `"}]}`, 413, "request_too_large"},
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := postJSON(ctx, p.URL+"/v1/chat/completions", tc.body)
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, tc.status, resp.StatusCode)
			var env oai.Envelope
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&env))
			require.Equal(t, tc.code, env.Error.Code)
			require.NotEmpty(t, env.Error.Message)
			require.NotEmpty(t, env.Error.Type)
		})
	}

	// A client that goes away mid-stream frees the engine's sequence.
	require.Eventually(t, func() bool { return p.replicas().Ready == 1 }, 60*time.Second, 20*time.Millisecond)
	engineMetrics := "http://" + p.replicas().Replicas[0].EngineAddr + "/metrics"
	cctx, cancel := context.WithCancel(ctx)
	resp, err := postJSON(cctx, p.URL+"/v1/chat/completions",
		`{"model":"demo","stream":true,"max_tokens":20000,"messages":[{"role":"user","content":"long story"}]}`)
	require.NoError(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "data: {"), line)
	running, _ := scrape(t, engineMetrics, "vllm:num_requests_running", nil)
	require.Equal(t, 1.0, running, "the stream runs on the engine")
	cancel()
	resp.Body.Close()
	require.Eventually(t, func() bool {
		running, _ := scrape(t, engineMetrics, "vllm:num_requests_running", nil)
		return running == 0
	}, 30*time.Second, 20*time.Millisecond, "the engine still runs the abandoned stream")
}

func TestEngineKilledMidStreamIsReportedAndReplaced(t *testing.T) {
	p := startLocal(t, strings.Replace(demo, "minScale: 0", "minScale: 1", 1))
	require.Eventually(t, func() bool { return p.replicas().Ready == 1 }, 60*time.Second, 20*time.Millisecond)
	victim := p.replicas().Replicas[0]

	client := sdk(p)
	stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("tell me a very long story", 20000))
	require.True(t, stream.Next(), "the stream starts: %v", stream.Err())
	require.NoError(t, syscall.Kill(victim.EnginePID, syscall.SIGKILL))
	for stream.Next() {
	}
	require.Error(t, stream.Err(), "the client learns the stream broke")
	require.Contains(t, stream.Err().Error(), "error while streaming")

	require.Eventually(t, func() bool {
		st := p.replicas()
		return st.Ready == 1 && len(st.Replicas) == 1 && st.Replicas[0].Name != victim.Name
	}, 60*time.Second, 20*time.Millisecond, "the crashed replica is replaced")
	resp, err := client.Chat.Completions.New(context.Background(), chatParams("still there?", 4))
	require.NoError(t, err)
	require.NotEmpty(t, resp.Choices[0].Message.Content)
}

func TestKilledPlatformTakesItsReplicasWithIt(t *testing.T) {
	p := startLocal(t, strings.Replace(demo, "minScale: 0", "minScale: 2", 1))
	require.Eventually(t, func() bool { return p.replicas().Ready == 2 }, 60*time.Second, 20*time.Millisecond)
	var pids []int
	for _, r := range p.replicas().Replicas {
		pids = append(pids, r.EnginePID, r.ProxyPID)
	}
	require.NoError(t, p.cmd.Process.Kill()) // SIGKILL: no chance to clean up
	<-p.done
	require.Eventually(t, func() bool {
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "replica processes outlived a killed kvasir local")
}

// An idle queue-proxy runs on one P (pkg/maxprocs), the platform's own
// process on the runtime's default, and GOMAXPROCS in the environment pins
// both.
func TestIdleQueueProxyRunsOnOneP(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("one CPU: one P is the default")
	}
	if maxprocs.Pinned() {
		t.Skip("GOMAXPROCS is set for the tests")
	}
	p := startLocal(t, strings.Replace(demo, "minScale: 0", "minScale: 1", 1))
	require.Eventually(t, func() bool { return p.replicas().Ready == 1 }, 60*time.Second, 20*time.Millisecond)
	qp := "http://" + p.replicas().Replicas[0].Address + "/kvasir/metrics"
	// Startup may have used more than half a core; the Ps come back after five idle seconds.
	require.Eventually(t, func() bool {
		v, _ := scrape(t, qp, "go_sched_gomaxprocs_threads", nil)
		return v == 1
	}, 30*time.Second, 100*time.Millisecond, "an idle queue-proxy keeps one P")
	v, ok := p.metric("go_sched_gomaxprocs_threads", nil)
	require.True(t, ok)
	require.Greater(t, v, 1.0, "the platform (the activator) keeps the runtime's default")

	pinned := startLocalEnv(t, strings.Replace(demo, "minScale: 0", "minScale: 1", 1), []string{"GOMAXPROCS=3"})
	require.Eventually(t, func() bool { return pinned.replicas().Ready == 1 }, 60*time.Second, 20*time.Millisecond)
	v, ok = scrape(t, "http://"+pinned.replicas().Replicas[0].Address+"/kvasir/metrics", "go_sched_gomaxprocs_threads", nil)
	require.True(t, ok)
	require.Equal(t, 3.0, v, "GOMAXPROCS in the environment pins the queue-proxy's Ps (it inherits the platform's environment)")
}
