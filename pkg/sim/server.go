package sim

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvasir-serving/kvasir/pkg/kvevents"
)

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// WithExitHook sets what happens when --exit-after-tokens triggers: fn is
// called once, after the triggering stream has flushed its tokens (that
// stream's connection is then aborted). Main uses it to stop the process
// with status 3. Without a hook only the triggering stream is aborted.
func WithExitHook(fn func()) Option {
	return func(s *Server) { s.exitHook = fn }
}

// withGroup makes the server the leader of a serving group: it is ready
// only while every worker has joined and none has left (nil: no group).
func withGroup(g *groupLeader) Option {
	return func(s *Server) { s.group = g }
}

// Server is one simulated engine: an HTTP API over a scheduler. Create it
// with New, serve Handler, and drive it with Run.
type Server struct {
	cfg      Config
	log      *slog.Logger
	exitHook func()
	exitOnce sync.Once

	m       *metrics
	sched   *scheduler
	handler http.Handler
	loras   *loraSet
	kvPub   *kvevents.Publisher // nil without --kv-events-endpoint
	// kvFollowed: KV events can be followed from the first request (see
	// kvEventsReady); once true, it stays.
	kvFollowed atomic.Bool
	group      *groupLeader // nil unless the leader of a serving group
	tok        tokens       // the prompt tokenizer (--tokenizer)

	started atomic.Bool
	running atomic.Bool
	epoch   time.Time    // monotonic base of readyAt
	readyAt atomic.Int64 // nanoseconds since epoch

	created   int64  // unix seconds, for /v1/models
	modelJSON []byte // cfg.Model as a JSON string
	idPrefix  string
	ids       atomic.Uint64
	engineID  string // remote_engine_id of the KV this engine prefills

	rngMu sync.Mutex
	rng   *rand.Rand

	bufs sync.Pool // *[]byte

	// streamPeak is the largest batch of chunks a stream has buffered, in
	// bytes; writeTimeouts counts requests aborted because their client did
	// not accept a write within --write-timeout.
	streamPeak    atomic.Int64
	writeTimeouts atomic.Uint64
}

// New validates cfg and builds a Server. Call Run to start its engine. With
// --tokenizer, New loads the tokenizer file. With --kv-events-endpoint, New
// binds the endpoint (or starts connecting to it) and Run closes it when it
// returns.
func New(cfg Config, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("engine simulator config: %w", err)
	}
	tok, tk, err := loadTokens(cfg.Tokenizer)
	if err != nil {
		return nil, fmt.Errorf("engine simulator: %w", err)
	}
	var nonce [8]byte
	_, _ = crand.Read(nonce[:]) // crypto/rand.Read never fails
	var uuid [16]byte
	_, _ = crand.Read(uuid[:])
	uuid[6] = uuid[6]&0x0f | 0x40 // version 4, like vLLM's engine ids
	uuid[8] = uuid[8]&0x3f | 0x80
	h := hex.EncodeToString(uuid[:])
	s := &Server{
		cfg:       cfg,
		log:       slog.Default(),
		epoch:     time.Now(),
		created:   time.Now().Unix(),
		modelJSON: jsonString(cfg.Model),
		idPrefix:  hex.EncodeToString(nonce[:]),
		engineID:  h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:],
		rng:       rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		loras:     newLoRASet(cfg.LoRAModules),
		bufs:      sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }},
		tok:       tok,
	}
	for _, o := range opts {
		o(s)
	}
	if tk != nil {
		s.log.Info("loaded tokenizer", "tokenizer", cfg.Tokenizer, "vocab_size", tk.VocabSize())
	}
	s.m = newMetrics(cfg)
	s.sched = newScheduler(cfg, s.m, s.log)
	s.handler = s.routes()
	if cfg.KVEventsEndpoint != "" {
		pub, err := kvevents.NewPublisher(context.Background(), cfg.KVEventsEndpoint, cfg.KVEventsTopic)
		if err != nil {
			return nil, fmt.Errorf("engine simulator: --kv-events-endpoint: %w", err)
		}
		s.kvPub = pub
	}
	return s, nil
}

// Config returns the configuration the server was built with.
func (s *Server) Config() Config { return s.cfg }

// EngineID returns the engine's id, a random UUID fixed for the Server's
// life: the remote_engine_id of the KV it prefills for decode engines.
func (s *Server) EngineID() string { return s.engineID }

// Handler returns the HTTP API: the OpenAI endpoints, /health, /metrics,
// the LoRA adapter endpoints, vLLM's /tokenize and /reset_prefix_cache, and
// POST /sim/prefix-match.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready reports whether the engine is running and done "loading" and, as
// the leader of a serving group, whether all its workers have joined and
// none has left.
func (s *Server) Ready() bool {
	return s.running.Load() && int64(time.Since(s.epoch)) >= s.readyAt.Load() && (s.group == nil || s.group.notReady() == "") &&
		s.kvEventsReady()
}

// kvSubscribeWait bounds how long an engine that publishes KV events to a
// subscriber it connects to stays unready waiting for the subscription.
const kvSubscribeWait = 10 * time.Second

// kvEventsReady reports whether the engine's KV events reach their
// follower from the first request on. A Publisher that connects (to the
// queue-proxy beside the engine, which binds) drops what it publishes
// before it is connected and the subscription has come back to it, and
// the follower cannot tell (no later batch shows a gap when identical
// prompts store nothing new): the engine is not ready until the
// subscription is there, or kvSubscribeWait after it started. A Publisher
// that binds has no subscriber it waits for.
func (s *Server) kvEventsReady() bool {
	switch {
	case s.kvPub == nil || s.kvFollowed.Load():
		return true
	case s.kvPub.Addr() != nil || len(s.kvPub.Topics()) > 0:
		s.kvFollowed.Store(true)
		return true
	case time.Since(s.epoch) >= kvSubscribeWait:
		if s.kvFollowed.CompareAndSwap(false, true) {
			s.log.Warn("serving without a KV-event subscription: batches published before it arrives are lost",
				"endpoint", s.cfg.KVEventsEndpoint, "waited", kvSubscribeWait)
		}
		return true
	}
	return false
}

// Run runs the engine until ctx is done; requests still in the engine then
// fail. It may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("engine simulator: Run called twice")
	}
	start := time.Now()
	delay := time.Duration(float64(s.cfg.StartupDelay) / s.cfg.TimeScale)
	s.readyAt.Store(int64(start.Add(delay).Sub(s.epoch)))
	s.running.Store(true)
	defer s.running.Store(false)
	s.log.Info("engine starting", "model", s.cfg.Model, "role", s.cfg.Role, "engine_id", s.engineID, "kv_blocks", s.cfg.engineKVBlocks(), "block_size", s.cfg.BlockSize,
		"max_num_seqs", s.cfg.MaxNumSeqs*s.cfg.Parallel.data(), "max_num_batched_tokens", s.cfg.MaxNumBatchedTokens*s.cfg.Parallel.data(),
		"tensor_parallel", s.cfg.Parallel.Tensor, "pipeline_parallel", s.cfg.Parallel.Pipeline, "data_parallel", s.cfg.Parallel.Data,
		"group_size", s.cfg.Group.Size, "time_scale", s.cfg.TimeScale,
		"zero_latency", s.cfg.ZeroLatency, "startup_delay", s.cfg.StartupDelay)
	if delay > 0 {
		t := time.AfterFunc(delay, func() { s.log.Info("engine ready", "model", s.cfg.Model) })
		defer t.Stop()
	}
	if s.kvPub != nil {
		s.log.Info("publishing KV events", "endpoint", s.cfg.KVEventsEndpoint, "topic", s.cfg.KVEventsTopic, "bound", s.kvPub.Addr() != nil)
		published := make(chan struct{})
		go func() {
			defer close(published)
			publishKVEvents(s.kvPub, s.sched.ev.out, s.log)
		}()
		defer func() {
			s.sched.ev.close() // the scheduler has stopped: nothing more comes
			<-published
			_ = s.kvPub.Close()
		}()
	}
	s.sched.run(ctx, start)
	s.log.Info("engine stopped", "model", s.cfg.Model)
	return nil
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", s.handleChat)
	mux.HandleFunc("POST /v1/completions", s.handleCompletion)
	mux.HandleFunc("POST /v1/embeddings", s.handleEmbeddings)
	mux.HandleFunc("GET /v1/models", s.handleModels)
	mux.HandleFunc("POST /v1/load_lora_adapter", s.handleLoadLoRA)
	mux.HandleFunc("POST /v1/unload_lora_adapter", s.handleUnloadLoRA)
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("POST /tokenize", s.handleTokenize)
	mux.HandleFunc("POST /reset_prefix_cache", s.handleResetPrefixCache)
	mux.HandleFunc("POST /sim/prefix-match", s.handlePrefixMatch)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{}))
	return mux
}

// nextID returns a request id: the client's X-Request-Id, else a fresh one.
func (s *Server) nextID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" {
		return id
	}
	return fmt.Sprintf("%s%016x", s.idPrefix, s.ids.Add(1))
}

// injectFailure draws from the seeded RNG whether to fail a request.
func (s *Server) injectFailure() bool {
	if s.cfg.FailRate <= 0 {
		return false
	}
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64() < s.cfg.FailRate
}

// crash runs the exit hook once (--exit-after-tokens).
func (s *Server) crash(tokens int) {
	s.exitOnce.Do(func() {
		s.log.Warn("simulated engine crash", "reason", "exit-after-tokens", "tokens", tokens)
		if s.exitHook != nil {
			s.exitHook()
		}
	})
}

// getBuf returns an empty pooled buffer. Store the grown slice back into it
// before putBuf so the capacity is reused.
func (s *Server) getBuf() *[]byte {
	b := s.bufs.Get().(*[]byte)
	*b = (*b)[:0]
	return b
}

func (s *Server) putBuf(b *[]byte) {
	if cap(*b) <= 1<<20 {
		s.bufs.Put(b)
	}
}
