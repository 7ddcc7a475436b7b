package sim

import (
	"net/http"
	"strconv"
)

// tokenizeRules are the parameters of vLLM's tokenize requests the
// simulator checks (TokenizeCompletionRequest, TokenizeChatRequest).
var tokenizeRules = []paramRule{
	{name: "add_generation_prompt", apis: apiChat, kind: kindBool},
	{name: "add_special_tokens", apis: apiBoth, kind: kindBool},
	{name: "return_token_strs", apis: apiBoth, kind: kindBool, nullable: true},
}

// handleTokenize serves vLLM's POST /tokenize: the token ids the engine
// sees for a completions body ("prompt") or a chat body ("messages", with
// "add_generation_prompt", true by default): the prompt rendered as for
// /v1/completions or /v1/chat/completions, tokenized by the engine's
// tokenizer (the deterministic one, prompt.AppendTokens, or --tokenizer's).
// The answer is vLLM's:
// {"count": N, "max_model_len": M, "tokens": [...], "token_strs": null},
// token_strs listing each token's text when "return_token_strs" is true.
// The prompt may be empty, and is not checked against --max-model-len.
func (s *Server) handleTokenize(w http.ResponseWriter, r *http.Request) {
	body, obj, _, _, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer s.putBuf(body)
	msgs, hasMessages := obj.Get("messages")
	hasMessages = hasMessages && string(msgs) != "null"
	raw, hasPrompt := obj.Get("prompt")
	hasPrompt = hasPrompt && string(raw) != "null"
	switch {
	case hasMessages && hasPrompt:
		badRequest(w, "invalid_request", `give either "prompt" (completions) or "messages" (chat), not both`)
		return
	case !hasMessages && !hasPrompt:
		badRequest(w, "missing_prompt", `"prompt" (completions) or "messages" (chat) is required`)
		return
	}
	chat := hasMessages
	api := uint8(apiCompletions)
	if chat {
		api = apiChat
	}
	for i := range tokenizeRules {
		rule := &tokenizeRules[i]
		v, present := obj.Get(rule.name)
		if rule.apis&api == 0 || !present || (rule.nullable && string(v) == "null") {
			continue
		}
		if _, perr := checkParam(rule, v); perr != nil {
			perr.write(w)
			return
		}
	}
	strs := obj.Bool("return_token_strs")

	textBuf := s.getBuf()
	defer s.putBuf(textBuf)
	text, _, perr := appendPrompt(*textBuf, obj, chat)
	*textBuf = text
	if perr != nil {
		badRequest(w, perr.code, perr.msg)
		return
	}
	toks := s.tok.tokenize(text)
	defer s.tok.release(toks)
	tokens := s.tok.appendIDs(make([]uint32, 0, toks.n), toks, toks.n)

	// The request body is no longer referenced: reuse its buffer.
	b := append((*body)[:0], `{"count":`...)
	b = strconv.AppendInt(b, int64(len(tokens)), 10)
	b = append(b, `,"max_model_len":`...)
	b = strconv.AppendInt(b, int64(s.cfg.MaxModelLen), 10)
	b = append(b, `,"tokens":[`...)
	for i, id := range tokens {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(id), 10)
	}
	b = append(b, `],"token_strs":`...)
	if strs {
		b = append(b, '[')
		for i := range tokens {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, jsonString(string(s.tok.tokenText(toks, i)))...)
		}
		b = append(b, ']')
	} else {
		b = append(b, "null"...)
	}
	b = append(b, '}')
	*body = b
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}
