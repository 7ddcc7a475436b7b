package sim

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/openai"
	"github.com/kvasir-serving/kvasir/pkg/prompt"
)

// maxBodyBytes bounds request bodies.
const maxBodyBytes = 32 << 20

func badRequest(w http.ResponseWriter, code, msg string) {
	openai.WriteError(w, http.StatusBadRequest, openai.Err(openai.TypeInvalidRequest, code, msg), 0)
}

// checkReady answers 503 while the engine is loading or not running.
func (s *Server) checkReady(w http.ResponseWriter) bool {
	if s.Ready() {
		return true
	}
	msg, retry := "the engine is not running", time.Second
	switch {
	case !s.running.Load():
	case s.group != nil && s.group.notReady() != "":
		msg = s.group.notReady()
	case int64(time.Since(s.epoch)) >= s.readyAt.Load() && !s.kvEventsReady():
		msg = "waiting for the KV-event subscriber's subscription"
	default:
		msg = "the model is still loading"
		retry = max(retry, time.Duration(s.readyAt.Load())-time.Since(s.epoch))
	}
	openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "model_not_ready", msg), retry)
	return false
}

// readJSON reads the body into *buf and parses its top-level object.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, buf *[]byte) (openai.Object, bool) {
	body, err := readAll(http.MaxBytesReader(w, r.Body, maxBodyBytes), *buf)
	*buf = body
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			openai.WriteError(w, http.StatusRequestEntityTooLarge, openai.ErrBodyTooLarge, 0)
		} else {
			badRequest(w, "invalid_body", "could not read the request body: "+err.Error())
		}
		return openai.Object{}, false
	}
	obj, err := openai.Parse(body)
	if err != nil {
		switch {
		case errors.Is(err, openai.ErrNotObject):
			badRequest(w, "invalid_json", "request body must be a JSON object")
		case errors.Is(err, openai.ErrDuplicateKey):
			openai.WriteError(w, http.StatusBadRequest, openai.ParseError(err), 0)
		default:
			openai.WriteError(w, http.StatusBadRequest, openai.ErrMalformedJSON, 0)
		}
		return openai.Object{}, false
	}
	return obj, true
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// resolveModel checks the request's model: the served model (also when
// absent, which vLLM accepts too) or a loaded LoRA adapter. It returns the name as a
// JSON string and the adapter, if any.
func (s *Server) resolveModel(w http.ResponseWriter, obj openai.Object) (modelJSON []byte, lora string, ok bool) {
	raw, present := obj.Get("model")
	if !present || string(raw) == "null" {
		return s.modelJSON, "", true
	}
	name, isString := obj.String("model")
	switch {
	case !isString:
		badRequest(w, "invalid_model", `"model" must be a string`)
		return nil, "", false
	case name == s.cfg.Model:
		return s.modelJSON, "", true
	case s.cfg.LoRAEnabled() && s.loras.has(name):
		return jsonString(name), name, true
	}
	openai.WriteError(w, http.StatusNotFound, openai.ModelNotFound(name), 0)
	return nil, "", false
}

func (s *Server) handleChat(w http.ResponseWriter, r *http.Request) { s.handleGenerate(w, r, true) }

func (s *Server) handleCompletion(w http.ResponseWriter, r *http.Request) {
	s.handleGenerate(w, r, false)
}

// accept does what every generating endpoint does first: answer 503 while
// loading, read and parse the body into a pooled buffer, and resolve the
// model (or LoRA adapter). When ok, the caller owns body (obj refers to it)
// and returns it with putBuf.
func (s *Server) accept(w http.ResponseWriter, r *http.Request) (body *[]byte, obj openai.Object, modelJSON []byte, lora string, ok bool) {
	if !s.checkReady(w) {
		return nil, obj, nil, "", false
	}
	body = s.getBuf()
	if obj, ok = s.readJSON(w, r, body); ok {
		modelJSON, lora, ok = s.resolveModel(w, obj)
	}
	if !ok {
		s.putBuf(body)
		return nil, obj, nil, "", false
	}
	return body, obj, modelJSON, lora, true
}

// handleGenerate serves /v1/chat/completions (chat) and /v1/completions.
func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request, chat bool) {
	body, obj, model, lora, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer s.putBuf(body)
	sp, perr := parseSampling(obj, chat)
	if perr != nil {
		perr.write(w)
		return
	}
	textBuf := s.getBuf()
	defer s.putBuf(textBuf)
	text, ok := renderPrompt(w, obj, chat, textBuf)
	if !ok {
		return
	}
	toks := s.tok.tokenize(text)
	defer s.tok.release(toks)
	promptLen := toks.n
	if !s.checkPromptLen(w, promptLen, sp) {
		return
	}
	xfer, ok := s.transferOf(w, obj, sp.stream)
	if !ok {
		return
	}
	if s.injectFailure() {
		openai.WriteError(w, http.StatusInternalServerError,
			openai.Err(openai.TypeServer, "injected_failure", "simulated engine failure (--fail-rate)"), 0)
		return
	}
	maxTokens, stopReason := s.outputBudget(sp, xfer, promptLen)
	q := newSeq(promptLen, maxTokens, sp.stream)
	q.stopReason = stopReason
	q.xfer = xfer
	q.lora = lora
	q.hashes = s.tok.blockHashes(toks, s.cfg.BlockSize)
	prompt.SaltHashes(q.hashes, lora)
	if s.kvPub != nil {
		n := len(q.hashes) * s.cfg.BlockSize
		q.tokenIDs = s.tok.appendIDs(make([]uint32, 0, n), toks, n)
	}
	enc := newEncoder(chat, s.nextID(r), time.Now().Unix(), model, promptLen, sp.stream && sp.includeUsage)
	if err := s.sched.submit(q); err != nil {
		openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "engine_stopped", err.Error()), time.Second)
		return
	}
	if sp.stream {
		s.streamResponse(w, r, q, enc)
	} else {
		s.fullResponse(w, r, q, enc)
	}
}

// checkPromptLen answers 400 unless the prompt has tokens and leaves room
// in the context for the requested output.
func (s *Server) checkPromptLen(w http.ResponseWriter, promptLen int, sp sampling) bool {
	if promptLen == 0 { // a tokenizer that drops everything the text holds
		badRequest(w, "invalid_prompt", "the prompt must not be empty")
		return false
	}
	if promptLen >= s.cfg.MaxModelLen {
		badRequest(w, codeContextLength, fmt.Sprintf(
			"This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input.",
			s.cfg.MaxModelLen, promptLen))
		return false
	}
	if sp.maxTokensParam != "" && sp.maxTokens > s.cfg.MaxModelLen-promptLen {
		// The words of vLLM's 2025 releases; vLLM answers 400 rather than
		// capping.
		badParam(w, codeContextLength, sp.maxTokensParam, fmt.Sprintf(
			"'max_tokens' or 'max_completion_tokens' is too large: %d. This model's maximum context length is %d tokens and your request has %d input tokens (%d > %d - %d).",
			sp.maxTokens, s.cfg.MaxModelLen, promptLen, sp.maxTokens, s.cfg.MaxModelLen, promptLen))
		return false
	}
	return true
}

// transferOf reads the request's KV transfer, answering 400 for a bad one
// or for a streamed prefill.
func (s *Server) transferOf(w http.ResponseWriter, obj openai.Object, stream bool) (kvXfer, bool) {
	xfer, ok := s.kvTransfer(w, obj)
	if !ok {
		return xfer, false
	}
	if xfer == xferSend && stream {
		badParam(w, codeBadKV, "stream",
			`"stream" must be false with kv_transfer_params.do_remote_decode: the prefill answers one response`)
		return xfer, false
	}
	return xfer, true
}

// outputBudget is how many tokens a sequence generates at most, and the
// finish reason when it reaches that many.
func (s *Server) outputBudget(sp sampling, xfer kvXfer, promptLen int) (maxTokens int, stopReason string) {
	maxTokens, stopReason = sp.maxTokens, reasonLength
	switch {
	case xfer == xferSend:
		// The prefill half of a disaggregated request: one token, as vLLM's
		// proxies ask with max_tokens 1.
		maxTokens = 1
	case sp.maxTokensParam == "":
		// vLLM would generate up to the context length; the simulator's
		// default is shorter, and ends as if the model stopped by itself.
		maxTokens = s.cfg.DefaultMaxTokens
		if room := s.cfg.MaxModelLen - promptLen; maxTokens > room {
			maxTokens = room
		} else {
			stopReason = reasonStop
		}
	}
	return maxTokens, stopReason
}

// renderPrompt renders the request's prompt (chat messages or completions
// prompt) into *buf and returns it; it answers 400 when it is missing,
// malformed or empty.
func renderPrompt(w http.ResponseWriter, obj openai.Object, chat bool, buf *[]byte) ([]byte, bool) {
	text, noMessages, perr := appendPrompt((*buf)[:0], obj, chat)
	*buf = text
	switch {
	case perr != nil:
		badRequest(w, perr.code, perr.msg)
		return nil, false
	case noMessages:
		badRequest(w, "invalid_messages", `"messages" must not be empty`)
		return nil, false
	case len(text) == 0:
		badRequest(w, "invalid_prompt", "the prompt must not be empty")
		return nil, false
	}
	return text, true
}

// promptError is a missing or malformed prompt: a 400 with code.
type promptError struct{ code, msg string }

// appendPrompt appends the prompt text the engine sees for a chat request
// (chat) or a completions request to dst: pkg/prompt's canonical rendering
// of "messages", ended by the generation prompt unless
// "add_generation_prompt" is false (vLLM's chat template parameter), or the
// "prompt". noMessages reports a chat request with no message.
func appendPrompt(dst []byte, obj openai.Object, chat bool) (text []byte, noMessages bool, perr *promptError) {
	if chat {
		raw, present := obj.Get("messages")
		if !present || string(raw) == "null" {
			return dst, false, &promptError{"missing_messages", `"messages" is required`}
		}
		start := len(dst)
		text, err := prompt.AppendChatJSON(dst, raw)
		if err != nil {
			return text, false, &promptError{"invalid_messages", err.Error()}
		}
		noMessages = len(text)-start == len(prompt.GenerationPrompt)
		if v, _ := obj.Get("add_generation_prompt"); string(v) == "false" {
			text = text[:len(text)-len(prompt.GenerationPrompt)]
		}
		return text, noMessages, nil
	}
	raw, present := obj.Get("prompt")
	if !present || string(raw) == "null" {
		return dst, false, &promptError{"missing_prompt", `"prompt" is required`}
	}
	text, err := prompt.AppendCompletion(dst, raw)
	if err != nil {
		return text, false, &promptError{"invalid_prompt", err.Error()}
	}
	return text, false, nil
}

// streamBufferBytes bounds what a stream buffers: once its pending chunks
// reach this size they are written (and must be accepted within
// --write-timeout) before more are encoded. Tokens produced meanwhile are
// only counted (seq.tokens), so a stream never holds more than this plus
// the events that cross it, however far its client lags.
const streamBufferBytes = 32 << 10

// streamResponse writes a sequence's tokens as SSE chunks as they are
// produced: one chunk per token, flushed together when the handler wakes,
// in batches of at most streamBufferBytes. A client that does not accept a
// batch within --write-timeout has its request aborted.
func (s *Server) streamResponse(w http.ResponseWriter, r *http.Request, q *seq, enc *encoder) {
	completed := false
	defer func() {
		if !completed {
			s.sched.cancel(q)
		}
	}()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if !s.writeFlush(w, rc, nil) {
		return
	}

	bp := s.getBuf()
	defer s.putBuf(bp)
	ctx := r.Context()
	sent := 0
	for {
		select {
		case <-q.notify:
		case <-q.done:
		case <-ctx.Done():
			return
		}
		done := q.isDone() // before loading tokens: once done, tokens is final
		n := int(q.tokens.Load())
		for {
			b := (*bp)[:0]
			for sent < n && len(b) < streamBufferBytes {
				if sent == 0 && enc.chat {
					b = enc.appendRoleChunk(b)
				}
				b = enc.appendTokenChunk(b, sent)
				sent++
				if sent == s.cfg.AbortAfterTokens {
					*bp = b
					s.log.Info("aborting stream", "reason", "abort-after-tokens", "tokens", sent)
					s.writeFlush(w, rc, b)
					panic(http.ErrAbortHandler)
				}
				if sent == s.cfg.ExitAfterTokens {
					*bp = b
					s.writeFlush(w, rc, b)
					s.crash(sent)
					panic(http.ErrAbortHandler)
				}
			}
			last := done && sent == n && len(b) < streamBufferBytes
			if last {
				completed = true
				if q.err != nil {
					b = append(b, openai.ErrorEvent(openai.Err(openai.TypeUnavailable, "engine_stopped", q.err.Error()))...)
				} else {
					b = enc.appendFinalChunk(b, q.reason)
					if enc.includeUsage {
						b = enc.appendUsageChunk(b, usage{prompt: q.promptLen, completion: n, cached: q.cached})
					}
				}
				b = append(b, openai.DoneEvent...)
			}
			*bp = b
			s.noteBuffered(len(b))
			if len(b) > 0 && !s.writeFlush(w, rc, b) {
				return
			}
			if last {
				return
			}
			if sent == n && !done {
				break // wait for more tokens
			}
		}
	}
}

// noteBuffered records the size of a stream's pending chunks (the largest
// seen is kept for tests).
func (s *Server) noteBuffered(n int) {
	for {
		peak := s.streamPeak.Load()
		if int64(n) <= peak || s.streamPeak.CompareAndSwap(peak, int64(n)) {
			return
		}
	}
}

// writeFlush writes b (may be empty) and flushes it, giving the client
// --write-timeout to accept it. It reports whether that succeeded; a
// client that let the deadline pass is logged and counted. The deadline
// also bounds what net/http writes after the handler returns (the end of a
// chunked body); net/http clears it before the connection serves another
// request.
func (s *Server) writeFlush(w http.ResponseWriter, rc *http.ResponseController, b []byte) bool {
	// Without deadline support (a ResponseWriter that does not expose its
	// connection) the write simply has none.
	_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	var err error
	if len(b) > 0 {
		_, err = w.Write(b)
	}
	if err == nil {
		err = rc.Flush()
	}
	if err == nil {
		return true
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		s.writeTimeouts.Add(1)
		s.log.Warn("aborting request: the client did not read its response", "write_timeout", s.cfg.WriteTimeout, "pending_bytes", len(b))
	}
	return false
}

// fullResponse waits for the sequence and writes the whole response.
func (s *Server) fullResponse(w http.ResponseWriter, r *http.Request, q *seq, enc *encoder) {
	select {
	case <-q.done:
	case <-r.Context().Done():
		s.sched.cancel(q)
		return
	}
	if q.err != nil {
		openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "engine_stopped", q.err.Error()), time.Second)
		return
	}
	n := int(q.tokens.Load())
	bp := s.getBuf()
	defer s.putBuf(bp)
	var kvParams []byte
	if q.xfer == xferSend {
		kvParams = s.appendSentKV(nil, r, q.sentBlocks)
	}
	*bp = enc.appendResponse((*bp)[:0], n, q.reason, usage{prompt: q.promptLen, completion: n, cached: q.cached}, kvParams)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(*bp)))
	s.writeFlush(w, http.NewResponseController(w), *bp)
}

// handleEmbeddings serves /v1/embeddings: every input is a prefill-only
// sequence of the engine, and its vector is 8 floats derived from its hash.
func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	body, obj, model, _, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer s.putBuf(body)
	inputs, base64Format, ok := readEmbeddingRequest(w, obj)
	if !ok {
		return
	}
	seqs, total, ok := s.embeddingSeqs(w, inputs)
	if !ok || !s.runPrefills(w, r, seqs) {
		return
	}
	// The request body is no longer referenced: reuse its buffer.
	b := appendEmbeddingResponse((*body)[:0], s.nextID(r), model, inputs, base64Format, total)
	*body = b
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// readEmbeddingRequest reads an embeddings request's inputs and whether it
// asks for base64 vectors; it answers 400 for a bad request.
func readEmbeddingRequest(w http.ResponseWriter, obj openai.Object) (inputs [][]byte, base64Format, ok bool) {
	raw, present := obj.Get("input")
	if !present || string(raw) == "null" {
		badRequest(w, "missing_input", `"input" is required`)
		return nil, false, false
	}
	inputs, err := decodeEmbeddingInputs(raw)
	if err != nil {
		badRequest(w, "invalid_input", err.Error())
		return nil, false, false
	}
	if f, ok := obj.String("encoding_format"); ok {
		switch f {
		case "float":
		case "base64":
			base64Format = true
		default:
			badRequest(w, "invalid_encoding_format", `"encoding_format" must be "float" or "base64"`)
			return nil, false, false
		}
	}
	return inputs, base64Format, true
}

// embeddingSeqs makes one prefill-only sequence per input and counts their
// tokens; it answers 400 for an input that is empty or too long.
func (s *Server) embeddingSeqs(w http.ResponseWriter, inputs [][]byte) ([]*seq, int, bool) {
	seqs := make([]*seq, len(inputs))
	total := 0
	for i, in := range inputs {
		toks := s.tok.tokenize(in)
		n := toks.n
		s.tok.release(toks)
		if n == 0 || n > s.cfg.MaxModelLen {
			badRequest(w, "invalid_input", fmt.Sprintf("input %d has %d tokens; want 1..%d", i, n, s.cfg.MaxModelLen))
			return nil, 0, false
		}
		total += n
		seqs[i] = newSeq(n, 0, false)
	}
	return seqs, total, true
}

// runPrefills submits every sequence and waits for them all. It answers 503
// when the engine stops first, and cancels the rest (answering nothing)
// when the client goes away.
func (s *Server) runPrefills(w http.ResponseWriter, r *http.Request, seqs []*seq) bool {
	for i, q := range seqs {
		if err := s.sched.submit(q); err != nil {
			for _, prev := range seqs[:i] {
				s.sched.cancel(prev)
			}
			openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "engine_stopped", err.Error()), time.Second)
			return false
		}
	}
	for i, q := range seqs {
		select {
		case <-q.done:
		case <-r.Context().Done():
			for _, rest := range seqs[i:] {
				s.sched.cancel(rest)
			}
			return false
		}
		if q.err != nil {
			openai.WriteError(w, http.StatusServiceUnavailable, openai.Err(openai.TypeUnavailable, "engine_stopped", q.err.Error()), time.Second)
			return false
		}
	}
	return true
}

// appendEmbeddingResponse appends the embeddings response for inputs, which
// used total prompt tokens, to b.
func appendEmbeddingResponse(b []byte, id string, model []byte, inputs [][]byte, base64Format bool, total int) []byte {
	b = append(b, `{"id":"embd-`...)
	b = append(b, id...)
	b = append(b, `","object":"list","created":`...)
	b = strconv.AppendInt(b, time.Now().Unix(), 10)
	b = append(b, `,"model":`...)
	b = append(b, model...)
	b = append(b, `,"data":[`...)
	for i, in := range inputs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `,"object":"embedding","embedding":`...)
		b = appendVector(b, embed(in), base64Format)
		b = append(b, '}')
	}
	b = append(b, `],"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(total), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(total), 10)
	b = append(b, `,"completion_tokens":0,"prompt_tokens_details":null}}`...)
	return b
}

// appendVector appends an embedding as a JSON array of floats, or as a
// base64 string of little-endian float32s.
func appendVector(b []byte, vec [8]float32, base64Format bool) []byte {
	if base64Format {
		var raw [4 * len(vec)]byte
		for j, v := range vec {
			binary.LittleEndian.PutUint32(raw[4*j:], math.Float32bits(v))
		}
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, raw[:])
		return append(b, '"')
	}
	b = append(b, '[')
	for j, v := range vec {
		if j > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendFloat(b, float64(v), 'g', -1, 32)
	}
	return append(b, ']')
}

// decodeEmbeddingInputs accepts a string, an array of strings, an array of
// token ids or an array of token id arrays; token ids become 4 bytes each.
func decodeEmbeddingInputs(raw []byte) ([][]byte, error) {
	bad := errors.New(`"input" must be a string, an array of strings, an array of token ids or an array of token id arrays`)
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return [][]byte{[]byte(one)}, nil
	}
	var strs []string
	if json.Unmarshal(raw, &strs) == nil && len(strs) > 0 {
		out := make([][]byte, len(strs))
		for i, s := range strs {
			out[i] = []byte(s)
		}
		return out, nil
	}
	ids := func(v []uint32) []byte {
		b := make([]byte, 0, 4*len(v))
		for _, id := range v {
			b = binary.LittleEndian.AppendUint32(b, id)
		}
		return b
	}
	var flat []uint32
	if json.Unmarshal(raw, &flat) == nil && len(flat) > 0 {
		return [][]byte{ids(flat)}, nil
	}
	var nested [][]uint32
	if json.Unmarshal(raw, &nested) == nil && len(nested) > 0 {
		out := make([][]byte, len(nested))
		for i, v := range nested {
			out[i] = ids(v)
		}
		return out, nil
	}
	return nil, bad
}

// embed returns a deterministic unit vector of 8 floats for an input.
func embed(in []byte) [8]float32 {
	h := fnv.New64a()
	_, _ = h.Write(in)
	x := h.Sum64()
	var v [8]float32
	var norm float64
	for i := range v {
		x += 0x9e3779b97f4a7c15 // splitmix64
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		f := float64(z>>11)/float64(1<<53)*2 - 1
		v[i] = float32(f)
		norm += f * f
	}
	norm = math.Sqrt(norm)
	for i := range v {
		v[i] = float32(float64(v[i]) / norm)
	}
	return v
}

type modelCard struct {
	ID          string  `json:"id"`
	Object      string  `json:"object"`
	Created     int64   `json:"created"`
	OwnedBy     string  `json:"owned_by"`
	Root        string  `json:"root"`
	Parent      *string `json:"parent"`
	MaxModelLen int     `json:"max_model_len"`
}

// handleModels serves /v1/models: the served model and its LoRA adapters.
func (s *Server) handleModels(w http.ResponseWriter, _ *http.Request) {
	if !s.checkReady(w) {
		return
	}
	base := s.cfg.Model
	cards := []modelCard{{ID: base, Object: "model", Created: s.created, OwnedBy: "kvasir-sim", Root: base, MaxModelLen: s.cfg.MaxModelLen}}
	for _, l := range s.loras.list() {
		cards = append(cards, modelCard{ID: l.Name, Object: "model", Created: s.created, OwnedBy: "kvasir-sim", Root: l.Path, Parent: &base, MaxModelLen: s.cfg.MaxModelLen})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Object string      `json:"object"`
		Data   []modelCard `json:"data"`
	}{"list", cards})
}

// handleHealth answers 200 once the engine is ready, 503 before.
func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request) {
	if s.checkReady(w) {
		w.WriteHeader(http.StatusOK)
	}
}

// handleLoadLoRA serves vLLM's POST /v1/load_lora_adapter.
func (s *Server) handleLoadLoRA(w http.ResponseWriter, r *http.Request) {
	name, path, ok := s.loraRequest(w, r)
	if !ok {
		return
	}
	switch {
	case path == "":
		badRequest(w, "invalid_lora", `"lora_path" is required`)
	case name == s.cfg.Model:
		badRequest(w, "invalid_lora", "the adapter name equals the served model name")
	case !s.loras.add(name, path):
		badRequest(w, "invalid_lora", fmt.Sprintf("The lora adapter '%s' has already been loaded.", name))
	default:
		s.log.Info("loaded LoRA adapter", "lora_name", name, "lora_path", path)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprintf(w, "Success: LoRA adapter '%s' added successfully.", name)
	}
}

// handleUnloadLoRA serves vLLM's POST /v1/unload_lora_adapter.
func (s *Server) handleUnloadLoRA(w http.ResponseWriter, r *http.Request) {
	name, _, ok := s.loraRequest(w, r)
	if !ok {
		return
	}
	if !s.loras.remove(name) {
		openai.WriteError(w, http.StatusNotFound,
			openai.Err(openai.TypeNotFound, "lora_not_found", fmt.Sprintf("The lora adapter '%s' cannot be found.", name)), 0)
		return
	}
	s.log.Info("unloaded LoRA adapter", "lora_name", name)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = fmt.Fprintf(w, "Success: LoRA adapter '%s' removed successfully.", name)
}

// loraRequest reads the lora_name and lora_path of an adapter request.
func (s *Server) loraRequest(w http.ResponseWriter, r *http.Request) (name, path string, ok bool) {
	if !s.checkReady(w) {
		return "", "", false
	}
	if !s.cfg.LoRAEnabled() {
		badRequest(w, "lora_disabled", "LoRA adapters are not enabled (start the simulator with --enable-lora)")
		return "", "", false
	}
	body := s.getBuf()
	defer s.putBuf(body)
	obj, ok := s.readJSON(w, r, body)
	if !ok {
		return "", "", false
	}
	name, _ = obj.String("lora_name")
	if name == "" {
		badRequest(w, "invalid_lora", `"lora_name" is required`)
		return "", "", false
	}
	path, _ = obj.String("lora_path")
	return name, path, true
}
