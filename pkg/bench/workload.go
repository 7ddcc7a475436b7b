package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Request is one request of a workload, rendered and ready to send.
type Request struct {
	Body        []byte // JSON body, POSTed as is
	InputTokens int    // prompt length estimated at CharsPerToken (used when the server reports no usage)
	OutputLen   int    // max_tokens
	WantAnswer  bool   // the workload needs the generated text in Complete

	conv, turn int // multi-turn bookkeeping
}

// Workload yields the requests of a run. Implementations are safe for
// concurrent use.
type Workload interface {
	// Len is the number of requests the workload yields in total.
	Len() int
	// Next returns the next request to send, blocking while none is ready
	// (a multi-turn conversation waits for its previous answer). It returns
	// io.EOF when no request remains, or ctx's error.
	Next(ctx context.Context) (*Request, error)
	// Complete reports the outcome of a request Next returned: the text the
	// server generated (when WantAnswer) or the error. Every request Next
	// returns must be completed exactly once.
	Complete(req *Request, answer string, err error)
}

// NewWorkload builds the workload cfg selects (cfg need not be resolved).
// Bodies of random and generated-shared-prefix workloads are all rendered
// here, before anything is sent.
func NewWorkload(cfg Config) (Workload, error) {
	cfg = cfg.Resolved()
	enc := encoder{model: cfg.Model, chat: cfg.Endpoint == EndpointChat, stream: cfg.Stream}
	switch cfg.Workload {
	case WorkloadRandom:
		return newRandom(cfg, enc), nil
	case WorkloadSharedPrefix:
		return newSharedPrefix(cfg, enc), nil
	case WorkloadMultiTurn:
		return newMultiTurn(cfg, enc), nil
	}
	return nil, fmt.Errorf("--workload: unknown workload %q", cfg.Workload)
}

// fixed is a workload of requests rendered in advance, yielded in order.
type fixed struct {
	mu   sync.Mutex
	reqs []*Request
	next int
}

func (f *fixed) Len() int { return len(f.reqs) }

func (f *fixed) Next(ctx context.Context) (*Request, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.next >= len(f.reqs) {
		return nil, io.EOF
	}
	r := f.reqs[f.next]
	f.next++
	return r, nil
}

func (f *fixed) Complete(*Request, string, error) {}

// newRandom: one user message of uniform random length per request (SGLang's
// "random" dataset with range-ratio).
func newRandom(cfg Config, enc encoder) *fixed {
	rng := newRand(cfg.Seed, streamText)
	gen := textGen{rng}
	reqs := make([]*Request, cfg.NumPrompts)
	for i := range reqs {
		in := uniform(rng, cfg.InputLen, cfg.RangeRatio)
		out := uniform(rng, cfg.OutputLen, cfg.RangeRatio)
		msgs := []message{{Role: "user", Content: gen.text(in)}}
		reqs[i] = enc.request(msgs, out)
	}
	return &fixed{reqs: reqs}
}

// newSharedPrefix follows SGLang bench_serving's generated-shared-prefix:
// groups of prompts sharing a random system prompt, each with its own random
// question, all shuffled with the seed; NumPrompts cycles or truncates them.
func newSharedPrefix(cfg Config, enc encoder) *fixed {
	gen := textGen{newRand(cfg.Seed, streamText)}
	all := make([]*Request, 0, cfg.Groups*cfg.PromptsPerGroup)
	for range cfg.Groups {
		system := gen.text(cfg.SystemPromptLen)
		for range cfg.PromptsPerGroup {
			msgs := make([]message, 0, 2)
			if system != "" {
				msgs = append(msgs, message{Role: "system", Content: system})
			}
			msgs = append(msgs, message{Role: "user", Content: gen.text(cfg.QuestionLen)})
			all = append(all, enc.request(msgs, cfg.OutputLen))
		}
	}
	shuffle := newRand(cfg.Seed, streamShuffle)
	shuffle.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	reqs := make([]*Request, cfg.NumPrompts)
	for i := range reqs {
		r := *all[i%len(all)] // the body is shared, read-only
		reqs[i] = &r
	}
	return &fixed{reqs: reqs}
}

// message is one chat message.
type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// encoder renders request bodies for one endpoint.
type encoder struct {
	model  string
	chat   bool
	stream bool
}

type wireBody struct {
	Model         string         `json:"model"`
	Messages      []message      `json:"messages,omitempty"`
	Prompt        *string        `json:"prompt,omitempty"`
	MaxTokens     int            `json:"max_tokens"`
	IgnoreEOS     bool           `json:"ignore_eos"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options,omitempty"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// request renders msgs as a chat request, or for the completions endpoint as
// one prompt: the contents joined by newlines (so a shared leading message
// stays a shared prefix).
func (e encoder) request(msgs []message, outputLen int) *Request {
	b := wireBody{Model: e.model, MaxTokens: outputLen, IgnoreEOS: true, Stream: e.stream}
	if e.stream {
		b.StreamOptions = &streamOptions{IncludeUsage: true}
	}
	chars := 0
	for _, m := range msgs {
		chars += len(m.Content)
	}
	if e.chat {
		b.Messages = msgs
	} else {
		var sb strings.Builder
		sb.Grow(chars + len(msgs))
		for i, m := range msgs {
			if i > 0 {
				sb.WriteByte('\n')
			}
			sb.WriteString(m.Content)
		}
		p := sb.String()
		b.Prompt = &p
	}
	body, _ := json.Marshal(b) // cannot fail: strings, ints and bools only
	return &Request{
		Body:        body,
		InputTokens: (chars + CharsPerToken - 1) / CharsPerToken,
		OutputLen:   outputLen,
	}
}
