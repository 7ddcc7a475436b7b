package openai

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Usage is the part of an OpenAI usage object Kvasir reads: the tokens of
// the prompt, of them the ones served from the prefix cache, and the tokens
// generated.
type Usage struct {
	PromptTokens        uint64 `json:"prompt_tokens"`
	CompletionTokens    uint64 `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens uint64 `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

// Cached is the prompt tokens served from the prefix cache; 0 when the
// engine does not say.
func (u *Usage) Cached() uint64 {
	if u == nil || u.PromptTokensDetails == nil {
		return 0
	}
	return u.PromptTokensDetails.CachedTokens
}

// UsageOf decodes the top-level usage of a JSON object (a whole answer, or
// one event of a stream); nil when there is none (absent, null or not an
// object) or the body is not a JSON object.
func UsageOf(body []byte) *Usage {
	obj, err := Parse(body)
	if err != nil {
		return nil
	}
	raw, ok := obj.Get("usage")
	if !ok {
		return nil
	}
	var u *Usage
	if json.Unmarshal(raw, &u) != nil {
		return nil
	}
	return u
}

// UsageHeader carries, from the queue-proxy to the activator, the usage the
// queue-proxy measured of an answer: a response header on a whole answer, a
// trailer on a stream (sent when it ends, including when the engine failed
// mid-stream). It is a platform header: the queue-proxy drops any the engine
// sends, and the activator consumes it and never passes it to clients.
const UsageHeader = "Kvasir-Usage"

// FormatUsageHeader writes u as UsageHeader's value:
// "prompt=N, completion=N, cached=N".
func FormatUsageHeader(u *Usage) string {
	if u == nil {
		return ""
	}
	b := make([]byte, 0, 48)
	b = append(b, "prompt="...)
	b = strconv.AppendUint(b, u.PromptTokens, 10)
	b = append(b, ", completion="...)
	b = strconv.AppendUint(b, u.CompletionTokens, 10)
	b = append(b, ", cached="...)
	b = strconv.AppendUint(b, u.Cached(), 10)
	return string(b)
}

// ParseUsageHeader reads a UsageHeader value written by FormatUsageHeader.
// It refuses anything else: an unknown or repeated key, a value that is not
// a decimal count, cached above prompt, or a missing prompt or completion.
func ParseUsageHeader(v string) (*Usage, bool) {
	if v == "" || len(v) > 128 {
		return nil, false
	}
	var prompt, completion, cached uint64
	var seen [3]bool
	for part := range strings.SplitSeq(v, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, false
		}
		n, err := strconv.ParseUint(val, 10, 63)
		if err != nil {
			return nil, false
		}
		i := -1
		switch k {
		case "prompt":
			i, prompt = 0, n
		case "completion":
			i, completion = 1, n
		case "cached":
			i, cached = 2, n
		}
		if i < 0 || seen[i] {
			return nil, false
		}
		seen[i] = true
	}
	if !seen[0] || !seen[1] || cached > prompt {
		return nil, false
	}
	u := &Usage{PromptTokens: prompt, CompletionTokens: completion}
	if seen[2] {
		u.PromptTokensDetails = &struct {
			CachedTokens uint64 `json:"cached_tokens"`
		}{CachedTokens: cached}
	}
	return u, true
}
