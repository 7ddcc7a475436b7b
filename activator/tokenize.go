package activator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/scheduler"
	"github.com/kvasir-serving/kvasir/pkg/tokenizer"
	"github.com/kvasir-serving/kvasir/pkg/upstream"
)

// Precise prefix routing. The queue-proxies of engines that publish KV
// events stream the engine's resident blocks keyed by the engine's own
// tokens (queueproxy/kvfollow.go). To match them, the activator tokenizes
// a prompt as the engine does before it routes it, outside every lock:
//
//   - builtin: the engine is the simulator with its four-bytes-a-token
//     tokenizer, whose keys are the text keys: nothing to do;
//   - file: a Hugging Face tokenizer.json, loaded once per path, over the
//     canonical prompt (pkg/prompt), which is what the simulator sees;
//   - engine: the engine's own tokenization endpoint (vLLM's POST
//     /tokenize), asked through a ready replica's queue-proxy, with the
//     fields of the request that its chat template reads.
//
// Any failure routes the request as before (text keys): it costs prefix
// hits, never the request.

// maxTokenizeReply bounds the engine's tokenization answer.
const maxTokenizeReply = 16 << 20

// tokenizeTimeout bounds one tokenization round trip.
const tokenizeTimeout = 2 * time.Second

// chatTemplateFields are the chat request fields a chat template reads,
// passed to the engine's tokenization endpoint as sent.
var chatTemplateFields = []string{"messages", "tools", "chat_template", "chat_template_kwargs",
	"add_generation_prompt", "continue_final_message", "documents"}

// textTokenizer is a tokenizer file's encoder (pkg/tokenizer).
type textTokenizer interface {
	AppendEncode(dst []uint32, text []byte) []uint32
}

var _ textTokenizer = (*tokenizer.Tokenizer)(nil)

// tokenizers loads tokenizer files once per path and shares them across
// revisions.
type tokenizers struct {
	mu    sync.Mutex
	files map[string]*tokenizer.Tokenizer
}

// load returns the tokenizer of path, loading it on first use.
func (t *tokenizers) load(path string) (textTokenizer, error) {
	t.mu.Lock()
	tok, ok := t.files[path]
	t.mu.Unlock()
	if ok {
		return tok, nil
	}
	tok, err := tokenizer.Load(path) // I/O outside the lock
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.files == nil {
		t.files = map[string]*tokenizer.Tokenizer{}
	}
	if old, ok := t.files[path]; ok {
		return old, nil
	}
	t.files[path] = tok
	return tok, nil
}

// tokenize sets rt.req.Tokens as the revision's engine would tokenize the
// prompt, when it can know them. ctx and watch are the client's, as for
// send: a client that leaves cancels an engine's tokenization (watch is
// unused by a tokenizer file, which makes no I/O).
func (a *Activator) tokenize(ctx context.Context, rt routed, model string, watch upstream.Watcher) {
	tk := rt.rev.cfg.Tokenizer
	switch tk.Type {
	case v1alpha1.TokenizerFile:
		if rt.rev.tok == nil {
			return
		}
		text, err := rt.req.Text()
		if err != nil {
			return
		}
		rt.req.Tokens = rt.rev.tok.AppendEncode(make([]uint32, 0, len(text)/3+1), text)
	case v1alpha1.TokenizerEngine:
		if rt.req.API != scheduler.APIChat && rt.req.API != scheduler.APICompletions {
			return // nothing to tokenize
		}
		addr, ok := rt.rev.rev.tokenizeAddress()
		if !ok {
			return // at most one replica, or scaling from zero: no choice to make
		}
		select {
		case a.tokenizing <- struct{}{}: // bounds the calls in flight
		default:
			a.metrics.tokenizeSkipped.Inc()
			return
		}
		defer func() { <-a.tokenizing }()
		toks, err := a.engineTokens(ctx, addr, rt, model, tk.Path, watch)
		if err != nil {
			if ctx.Err() == nil {
				a.metrics.tokenizeErrors.Inc()
				a.log.Debug("engine tokenization failed; routing on the prompt text", slog.Any("error", err))
			}
			return
		}
		rt.req.Tokens = toks
	}
}

// maxTokenizing bounds the engine tokenizations in flight from one
// activator; beyond it, requests are routed on their text at once.
const maxTokenizing = 64

// engineTokens asks the engine behind the queue-proxy at addr to tokenize
// the request, within tokenizeTimeout all told. No header of the client's
// goes with it.
func (a *Activator) engineTokens(ctx context.Context, addr string, rt routed, model, path string, watch upstream.Watcher) ([]uint32, error) {
	body, err := tokenizeBody(rt.req, model)
	if err != nil {
		return nil, err
	}
	u, err := a.send(ctx, addr, path, nil, body, time.Now().Add(tokenizeTimeout), watch)
	if err != nil {
		return nil, fmt.Errorf("POST %s: %w", path, err)
	}
	defer u.finish(true) // reused when read to its end
	r := u.whole()
	if status := u.resp.StatusCode(); status != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<10)) // a small error body, so the connection is reused
		return nil, fmt.Errorf("POST %s: status %d", path, status)
	}
	var out struct {
		Tokens []uint32 `json:"tokens"`
	}
	if err := json.NewDecoder(io.LimitReader(r, maxTokenizeReply)).Decode(&out); err != nil {
		return nil, fmt.Errorf("POST %s: decode: %w", path, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(r, 4<<10)) // to EOF, so the connection is reused
	if out.Tokens == nil {
		out.Tokens = []uint32{}
	}
	return out.Tokens, nil
}

// tokenizeBody is the engine's tokenization request for a chat or
// completion request: the fields that decide its tokens, as sent.
func tokenizeBody(req *scheduler.Request, model string) ([]byte, error) {
	m, _ := json.Marshal(model)
	out := []byte(`{"model":`)
	out = append(out, m...)
	switch req.API {
	case scheduler.APIChat:
		for _, f := range chatTemplateFields {
			if v, ok := req.Body.Get(f); ok {
				k, _ := json.Marshal(f)
				out = append(append(append(append(out, ','), k...), ':'), v...)
			}
		}
	case scheduler.APICompletions:
		v, ok := req.Body.Get("prompt")
		if !ok || len(v) == 0 || v[0] != '"' {
			return nil, fmt.Errorf("only a string prompt is tokenized by the engine")
		}
		out = append(append(out, `,"prompt":`...), v...)
	default:
		return nil, fmt.Errorf("no prompt to tokenize")
	}
	return append(out, '}'), nil
}
