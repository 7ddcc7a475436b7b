package bench

import (
	"context"
	"io"
	"sync"
)

// multiTurn is the multi-turn workload: each conversation's turn k resends the
// whole history (the system prompt, the previous questions and the answers
// actually received) plus a new question. Turns of one conversation are
// sequential; conversations interleave as the load shape asks for requests.
//
// Exactly limit requests are yielded: conversations start while the budget
// has room, the last one possibly with fewer turns. A conversation whose turn
// fails ends there and gives its remaining turns back to the budget, so a new
// conversation takes them. Conversation i follows script i mod the number of
// scripts (--conversations).
type multiTurn struct {
	enc       encoder
	outputLen int
	turns     int
	scripts   []script
	limit     int

	mu        sync.Mutex
	convs     []*conversation // every conversation started, by id
	ready     []*conversation // conversations whose next turn can be sent, FIFO
	committed int             // turns planned by started conversations (sent or not)
	yielded   int
	inFlight  int
	changed   chan struct{} // closed and replaced whenever a turn completes
}

// script is the generated content of one conversation.
type script struct {
	system    string
	questions []string
}

type conversation struct {
	id      int
	script  *script
	planned int // turns this conversation will send if none fails
	sent    int
	history []message
}

func newMultiTurn(cfg Config, enc encoder) *multiTurn {
	gen := textGen{newRand(cfg.Seed, streamText)}
	scripts := make([]script, cfg.Conversations)
	for i := range scripts {
		s := &scripts[i]
		s.system = gen.text(cfg.SystemPromptLen)
		s.questions = make([]string, cfg.Turns)
		for t := range s.questions {
			s.questions[t] = gen.text(cfg.QuestionLen)
		}
	}
	return &multiTurn{
		enc:       enc,
		outputLen: cfg.OutputLen,
		turns:     cfg.Turns,
		scripts:   scripts,
		limit:     cfg.NumPrompts,
		changed:   make(chan struct{}),
	}
}

func (w *multiTurn) Len() int { return w.limit }

func (w *multiTurn) Next(ctx context.Context) (*Request, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		w.mu.Lock()
		if w.yielded >= w.limit {
			w.mu.Unlock()
			return nil, io.EOF
		}
		var c *conversation
		if len(w.ready) > 0 {
			c = w.ready[0]
			w.ready = w.ready[1:]
		} else if w.committed < w.limit {
			c = w.start()
		}
		if c != nil {
			turn := c.sent
			msgs := make([]message, len(c.history), len(c.history)+1)
			copy(msgs, c.history)
			msgs = append(msgs, message{Role: "user", Content: c.script.questions[turn]})
			c.sent++
			w.yielded++
			w.inFlight++
			w.mu.Unlock()
			r := w.enc.request(msgs, w.outputLen)
			r.WantAnswer = true
			r.conv, r.turn = c.id, turn
			return r, nil
		}
		if w.inFlight == 0 { // nothing ready, nothing to wait for
			w.mu.Unlock()
			return nil, io.EOF
		}
		changed := w.changed
		w.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// start begins a new conversation; w.mu is held.
func (w *multiTurn) start() *conversation {
	id := len(w.convs)
	c := &conversation{
		id:      id,
		script:  &w.scripts[id%len(w.scripts)],
		planned: min(w.turns, w.limit-w.committed),
	}
	if c.script.system != "" {
		c.history = []message{{Role: "system", Content: c.script.system}}
	}
	w.committed += c.planned
	w.convs = append(w.convs, c)
	return c
}

func (w *multiTurn) Complete(req *Request, answer string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.convs[req.conv]
	w.inFlight--
	if err != nil {
		w.committed -= c.planned - c.sent
		c.planned = c.sent
	} else {
		c.history = append(c.history,
			message{Role: "user", Content: c.script.questions[req.turn]},
			message{Role: "assistant", Content: answer})
		if c.sent < c.planned {
			w.ready = append(w.ready, c)
		}
	}
	close(w.changed)
	w.changed = make(chan struct{})
}
