package sim

import (
	"encoding/json"
	"strconv"
)

// usage is a response's token accounting.
type usage struct {
	prompt, completion, cached int
}

// encoder writes one response's JSON by appending to byte slices; the
// per-token work is a few copies.
type encoder struct {
	chat         bool
	includeUsage bool
	offset       int    // first word
	head         []byte // {"id":...,"object":...,"created":...,"model":...,
	fullHead     []byte // the same with the non-streaming object
}

func newEncoder(chat bool, id string, created int64, model []byte, offset int, includeUsage bool) *encoder {
	e := &encoder{chat: chat, includeUsage: includeUsage, offset: offset}
	prefix, chunkObj, fullObj := "cmpl-", "text_completion", "text_completion"
	if chat {
		prefix, chunkObj, fullObj = "chatcmpl-", "chat.completion.chunk", "chat.completion"
	}
	build := func(object string) []byte {
		b := append([]byte(`{"id":`), jsonString(prefix+id)...)
		b = append(b, `,"object":"`...)
		b = append(b, object...)
		b = append(b, `","created":`...)
		b = strconv.AppendInt(b, created, 10)
		b = append(b, `,"model":`...)
		b = append(b, model...)
		return append(b, ',')
	}
	e.head = build(chunkObj)
	e.fullHead = build(fullObj)
	return e
}

func (e *encoder) chunkEnd(b []byte) []byte {
	if e.includeUsage {
		b = append(b, `,"usage":null`...)
	}
	return append(b, "}\n\n"...)
}

// appendRoleChunk appends the first chat chunk: the assistant role.
func (e *encoder) appendRoleChunk(b []byte) []byte {
	b = append(b, "data: "...)
	b = append(b, e.head...)
	b = append(b, `"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]`...)
	return e.chunkEnd(b)
}

// appendTokenChunk appends the chunk of token i.
func (e *encoder) appendTokenChunk(b []byte, i int) []byte {
	b = append(b, "data: "...)
	b = append(b, e.head...)
	if e.chat {
		b = append(b, `"choices":[{"index":0,"delta":{"content":"`...)
		b = append(b, word(e.offset, i)...)
		b = append(b, `"},"logprobs":null,"finish_reason":null}]`...)
	} else {
		b = append(b, `"choices":[{"index":0,"text":"`...)
		b = append(b, word(e.offset, i)...)
		b = append(b, `","logprobs":null,"finish_reason":null}]`...)
	}
	return e.chunkEnd(b)
}

// appendFinalChunk appends the chunk carrying the finish reason.
func (e *encoder) appendFinalChunk(b []byte, reason string) []byte {
	b = append(b, "data: "...)
	b = append(b, e.head...)
	if e.chat {
		b = append(b, `"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"`...)
	} else {
		b = append(b, `"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"`...)
	}
	b = append(b, reason...)
	b = append(b, `"}]`...)
	return e.chunkEnd(b)
}

// appendUsageChunk appends the stream_options.include_usage chunk.
func (e *encoder) appendUsageChunk(b []byte, u usage) []byte {
	b = append(b, "data: "...)
	b = append(b, e.head...)
	b = append(b, `"choices":[],"usage":`...)
	b = appendUsage(b, u)
	return append(b, "}\n\n"...)
}

// appendResponse appends a whole non-streaming response of n tokens, with
// a top-level "kv_transfer_params" when kvParams (a JSON object) is given.
func (e *encoder) appendResponse(b []byte, n int, reason string, u usage, kvParams []byte) []byte {
	b = append(b, e.fullHead...)
	if e.chat {
		b = append(b, `"choices":[{"index":0,"message":{"role":"assistant","content":"`...)
	} else {
		b = append(b, `"choices":[{"index":0,"text":"`...)
	}
	for i := range n {
		b = append(b, word(e.offset, i)...)
	}
	if e.chat {
		b = append(b, `"}`...)
	} else {
		b = append(b, '"')
	}
	b = append(b, `,"logprobs":null,"finish_reason":"`...)
	b = append(b, reason...)
	b = append(b, `"}],"usage":`...)
	b = appendUsage(b, u)
	if kvParams != nil {
		b = append(b, `,"kv_transfer_params":`...)
		b = append(b, kvParams...)
	}
	return append(b, '}')
}

func appendUsage(b []byte, u usage) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(u.prompt), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(u.prompt+u.completion), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(u.completion), 10)
	b = append(b, `,"prompt_tokens_details":{"cached_tokens":`...)
	b = strconv.AppendInt(b, int64(u.cached), 10)
	return append(b, "}}"...)
}

// jsonString returns s as a JSON string literal.
func jsonString(s string) []byte {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}
