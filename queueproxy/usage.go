package queueproxy

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// usageDetails is the type of openai.Usage.PromptTokensDetails.
type usageDetails = struct {
	CachedTokens uint64 `json:"cached_tokens"`
}

// usageBuf holds a decoded usage without allocating: u, with its details
// pointing at d when it has any.
type usageBuf struct {
	u openai.Usage
	d usageDetails
}

// usageOf is openai.UsageOf for a whole answer from the engine, decoding
// into ub without allocating: the top-level usage of a JSON object, nil
// when there is none (absent, null or not an object), the body is not a
// JSON object, the key is there twice, or the usage does not decode into
// openai.Usage. Unlike UsageOf it does not validate the rest of the answer
// (the engine's JSON, passed on as it is): it finds the top-level members
// by their structure. The usage objects engines send are read by hand;
// anything unusual (an escaped key, differently cased keys, numbers that
// are not plain integers) goes through encoding/json as UsageOf does.
func usageOf(body []byte, ub *usageBuf) *openai.Usage {
	var raw []byte
	seen := 0
	if !eachMember(body, func(k, v []byte) bool {
		if string(k) == "usage" {
			raw = v
			seen++
		}
		return true
	}) {
		return openai.UsageOf(body) // an escaped key, or not an object
	}
	if seen != 1 {
		return nil
	}
	return decodeUsage(raw, ub)
}

// decodeUsage decodes raw, one valid JSON value, as json.Unmarshal into a
// *openai.Usage does.
func decodeUsage(raw []byte, ub *usageBuf) *openai.Usage {
	*ub = usageBuf{}
	if u, ok := fastUsage(raw, ub); ok {
		return u
	}
	var u *openai.Usage
	if json.Unmarshal(raw, &u) != nil {
		return nil
	}
	return u
}

// fastUsage decodes the usual shapes of a usage value; ok is false when it
// cannot tell what encoding/json would make of it.
func fastUsage(raw []byte, ub *usageBuf) (u *openai.Usage, ok bool) {
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		return nil, true
	}
	ok = eachMember(raw, func(k, v []byte) bool {
		switch string(k) {
		case "prompt_tokens":
			return setCount(&ub.u.PromptTokens, v)
		case "completion_tokens":
			return setCount(&ub.u.CompletionTokens, v)
		case "prompt_tokens_details":
			switch {
			case string(v) == "null":
				ub.u.PromptTokensDetails = nil
				return true
			case ub.u.PromptTokensDetails == nil:
				ub.d = usageDetails{}
				ub.u.PromptTokensDetails = &ub.d
			}
			return eachMember(v, func(k, v []byte) bool {
				if string(k) == "cached_tokens" {
					return setCount(&ub.d.CachedTokens, v)
				}
				return !foldsTo(k, "cached_tokens")
			})
		}
		return !foldsTo(k, "prompt_tokens") && !foldsTo(k, "completion_tokens") && !foldsTo(k, "prompt_tokens_details")
	})
	if !ok {
		return nil, false
	}
	return &ub.u, true
}

// foldsTo reports whether encoding/json would match key k to the field
// named name (case-insensitively).
func foldsTo(k []byte, name string) bool { return bytes.EqualFold(k, []byte(name)) }

// setCount sets a uint64 from a JSON value that is a plain integer (or
// null, which leaves it); false for anything else.
func setCount(dst *uint64, v []byte) bool {
	if string(v) == "null" {
		return true
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		return false
	}
	*dst = n
	return true
}

// eachMember calls f with the raw key (between its quotes) and the raw
// value (no surrounding space) of each member of obj, a valid JSON object,
// until f returns false. It reports false then, or when obj is not an
// object or a key has an escape (which f could not compare).
func eachMember(obj []byte, f func(k, v []byte) bool) bool {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return false
	}
	i = skipSpace(obj, i+1)
	if i < len(obj) && obj[i] == '}' {
		return true
	}
	for i < len(obj) && obj[i] == '"' {
		kEnd := skipString(obj, i)
		if kEnd < 0 {
			return false
		}
		k := obj[i+1 : kEnd-1]
		if bytes.IndexByte(k, '\\') >= 0 {
			return false
		}
		i = skipSpace(obj, kEnd)
		if i >= len(obj) || obj[i] != ':' {
			return false
		}
		vStart := skipSpace(obj, i+1)
		vEnd := skipValue(obj, vStart)
		if vEnd < 0 || !f(k, obj[vStart:vEnd]) {
			return false
		}
		i = skipSpace(obj, vEnd)
		if i < len(obj) && obj[i] == ',' {
			i = skipSpace(obj, i+1)
			continue
		}
		return i < len(obj) && obj[i] == '}'
	}
	return false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at b[i] (a
// quote), or -1.
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipValue returns the index after the JSON value that starts at b[i], or
// -1. The value is known to be valid.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				if j = skipString(b, j); j < 0 {
					return -1
				}
				j--
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j
}

// appendUsageHeader appends u as openai.FormatUsageHeader writes it.
func appendUsageHeader(dst []byte, u *openai.Usage) []byte {
	dst = append(dst, "prompt="...)
	dst = strconv.AppendUint(dst, u.PromptTokens, 10)
	dst = append(dst, ", completion="...)
	dst = strconv.AppendUint(dst, u.CompletionTokens, 10)
	dst = append(dst, ", cached="...)
	return strconv.AppendUint(dst, u.Cached(), 10)
}

// chunkFacts is what the meter reads of one streamed chunk.
type chunkFacts struct {
	hasError   bool // an "error" that is not null
	usage      *openai.Usage
	choicesSet bool // "choices" is an array, not absent or null
	noChoices  bool // ... and an empty one
	content    bool // a choice carries content (text, delta content, reasoning, tool calls)
}

// fastChunk reads a streamed completion chunk (valid JSON) as
// json.Unmarshal into chunk does, for the shapes engines send; ok is false
// when it cannot tell (an escaped or differently cased key, a field of an
// unexpected type), and the caller decodes with encoding/json.
func fastChunk(data []byte, ub, tmp *usageBuf) (cf chunkFacts, ok bool) {
	ok = eachMember(data, func(k, v []byte) bool {
		switch string(k) {
		case "error":
			cf.hasError = string(v) != "null"
			return true
		case "usage":
			*tmp = usageBuf{}
			u, ok := fastUsage(v, tmp)
			if !ok {
				return false
			}
			if u != nil {
				*ub = *tmp
				if ub.u.PromptTokensDetails != nil {
					ub.u.PromptTokensDetails = &ub.d
				}
				cf.usage = &ub.u
			}
			return true
		case "choices":
			if string(v) == "null" {
				cf.choicesSet, cf.noChoices = false, false
				return true
			}
			return eachElement(v, func(ch []byte) bool {
				cf.choicesSet = true
				return choiceContent(ch, &cf.content)
			}, &cf.choicesSet, &cf.noChoices)
		}
		return !foldsTo(k, "error") && !foldsTo(k, "usage") && !foldsTo(k, "choices")
	})
	return cf, ok
}

// choiceContent reads one choice: whether it carries content.
func choiceContent(ch []byte, content *bool) bool {
	return eachMember(ch, func(k, v []byte) bool {
		switch string(k) {
		case "text":
			return nonEmptyString(v, content)
		case "delta":
			if string(v) == "null" {
				return true
			}
			return eachMember(v, func(k, v []byte) bool {
				switch string(k) {
				case "content", "reasoning_content", "reasoning":
					return nonEmptyString(v, content)
				case "tool_calls":
					if hasItems(v) {
						*content = true
					}
					return true
				}
				return !foldsTo(k, "content") && !foldsTo(k, "reasoning_content") && !foldsTo(k, "reasoning") && !foldsTo(k, "tool_calls")
			})
		}
		return !foldsTo(k, "text") && !foldsTo(k, "delta")
	})
}

// nonEmptyString sets *content for a JSON string that decodes to a
// non-empty one; false when v is neither a string nor null.
func nonEmptyString(v []byte, content *bool) bool {
	switch {
	case string(v) == "null":
		return true
	case len(v) >= 2 && v[0] == '"':
		if len(v) > 2 {
			*content = true
		}
		return true
	}
	return false
}

// eachElement calls f with each element of arr, a valid JSON array, and
// records whether it is an array at all (set) and an empty one (empty).
// It reports false when arr is not an array or f does.
func eachElement(arr []byte, f func(el []byte) bool, set, empty *bool) bool {
	i := skipSpace(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return false
	}
	*set = true
	i = skipSpace(arr, i+1)
	if i < len(arr) && arr[i] == ']' {
		*empty = true
		return true
	}
	*empty = false
	for i < len(arr) {
		end := skipValue(arr, i)
		if end < 0 || !f(arr[i:end]) {
			return false
		}
		i = skipSpace(arr, end)
		if i < len(arr) && arr[i] == ',' {
			i = skipSpace(arr, i+1)
			continue
		}
		return i < len(arr) && arr[i] == ']'
	}
	return false
}
