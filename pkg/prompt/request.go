package prompt

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// ErrBadPrompt is returned by AppendCompletion for a prompt of the wrong shape.
var ErrBadPrompt = errors.New(`"prompt" must be a string, an array of strings or an array of token ids`)

// AppendCompletion appends the text of a completions request's raw "prompt"
// value to dst: a string, an array of strings (concatenated into one prompt)
// or an array of token ids (each id one 4-byte token, so token counts and
// prefix caching are exact).
func AppendCompletion(dst, raw []byte) ([]byte, error) {
	if len(raw) == 0 {
		return dst, ErrBadPrompt
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return dst, fmt.Errorf(`"prompt": %w`, err)
		}
		return append(dst, s...), nil
	case '[':
		var parts []json.RawMessage
		if err := json.Unmarshal(raw, &parts); err != nil {
			return dst, fmt.Errorf(`"prompt": %w`, err)
		}
		for _, p := range parts {
			switch {
			case len(p) > 0 && p[0] == '"':
				var s string
				if err := json.Unmarshal(p, &s); err != nil {
					return dst, fmt.Errorf(`"prompt": %w`, err)
				}
				dst = append(dst, s...)
			default:
				id, err := strconv.ParseUint(string(p), 10, 32)
				if err != nil {
					return dst, ErrBadPrompt
				}
				dst = binary.LittleEndian.AppendUint32(dst, uint32(id))
			}
		}
		return dst, nil
	}
	return dst, ErrBadPrompt
}

// Salt keys block hashes by LoRA adapter: KV computed under one adapter is
// not reusable under another (vLLM puts the LoRA id in its block hashes).
// The base model ("") has salt 0.
func Salt(adapter string) uint64 {
	if adapter == "" {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(adapter))
	return h.Sum64()
}

// SaltHashes applies Salt(adapter) to hashes in place.
func SaltHashes(hashes []uint64, adapter string) {
	if s := Salt(adapter); s != 0 {
		for i := range hashes {
			hashes[i] ^= s
		}
	}
}

// Errors of AppendRequest.
var (
	ErrNoMessages = errors.New(`"messages" is required`)
	ErrNoPrompt   = errors.New(`"prompt" is required`)
)

// AppendRequest appends the canonical prompt text of a parsed OpenAI request
// body to dst: the rendered "messages" of a chat request (chat true), ended
// by the generation prompt unless "add_generation_prompt" is false (vLLM's
// chat template parameter, which the simulator honours too), or the
// "prompt" of a completions request. On error dst is returned unchanged.
func AppendRequest(dst []byte, body openai.Object, chat bool) ([]byte, error) {
	key, missing := "prompt", ErrNoPrompt
	if chat {
		key, missing = "messages", ErrNoMessages
	}
	raw, ok := body.Get(key)
	if !ok || string(raw) == "null" {
		return dst, missing
	}
	if chat {
		out, err := AppendChatJSON(dst, raw)
		if err != nil {
			return out, err
		}
		if v, _ := body.Get("add_generation_prompt"); string(v) == "false" {
			out = out[:len(out)-len(GenerationPrompt)]
		}
		return out, nil
	}
	out, err := AppendCompletion(dst, raw)
	if err != nil {
		return dst, err
	}
	return out, nil
}
