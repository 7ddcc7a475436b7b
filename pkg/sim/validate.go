package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Request validation follows vLLM's OpenAI server: the types of its request
// models (vllm/entrypoints/openai/{chat_completion,completion}/protocol.py)
// and the ranges of SamplingParams._verify_args (vllm/sampling_params.py).
// The simulator ignores sampling parameters, but it rejects what vLLM
// rejects, with a 400 naming the field in error.param, so that a client bug
// shows against the simulator as it would against vLLM. One difference: the
// types are JSON's, strictly. vLLM's pydantic models also coerce numeric
// strings ("0.5") and booleans to numbers; the simulator answers 400.

// codeContextLength is the error code of a request that does not fit in
// --max-model-len.
const codeContextLength = "context_length_exceeded"

// paramError is an invalid request parameter: a 400 with param set.
type paramError struct {
	param string // the field, as the client named it
	code  string
	msg   string
}

func (e *paramError) write(w http.ResponseWriter) { badParam(w, e.code, e.param, e.msg) }

// jsonKind names the JSON type of a raw value (valid JSON, as openai.Parse
// checked).
func jsonKind(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case '[':
		return "an array"
	case '{':
		return "an object"
	}
	return "a number"
}

// paramKind is the JSON type a parameter must have.
type paramKind uint8

const (
	kindNumber  paramKind = iota // float
	kindInteger                  // a number without a fractional part
	kindBool
	kindString
	kindObject
	kindStop     // a string or an array of strings
	kindIntArray // an array of integers
)

func (k paramKind) String() string {
	return [...]string{"a number", "an integer", "a boolean", "a string", "an object",
		"a string or an array of strings", "an array of integers"}[k]
}

// Which APIs take a parameter.
const (
	apiChat = 1 << iota
	apiCompletions
	apiBoth = apiChat | apiCompletions
)

// paramRule is one request parameter: its type, whether null is allowed
// (vLLM's "X | None" fields; null then means absent) and its range.
type paramRule struct {
	name     string
	apis     uint8
	kind     paramKind
	nullable bool
	// check returns why a number (kindNumber, kindInteger) is out of range,
	// or "".
	check func(v float64) string
}

// sampleRules lists the parameters the simulator checks, in the order it
// checks them. Ranges are vLLM's.
var sampleRules = []paramRule{
	{name: "frequency_penalty", apis: apiBoth, kind: kindNumber, nullable: true, check: within(-2, 2)},
	{name: "presence_penalty", apis: apiBoth, kind: kindNumber, nullable: true, check: within(-2, 2)},
	{name: "repetition_penalty", apis: apiBoth, kind: kindNumber, nullable: true, check: func(v float64) string {
		if math.IsInf(v, 0) || math.IsNaN(v) {
			return "must be a finite number"
		}
		if v <= 0 {
			return "must be greater than zero"
		}
		return ""
	}},
	{name: "temperature", apis: apiBoth, kind: kindNumber, nullable: true, check: func(v float64) string {
		switch {
		case math.IsInf(v, 0) || math.IsNaN(v):
			return "must be a finite number"
		case v < 0:
			return "must be non-negative"
		case v > 2:
			return "must be in [0, 2]"
		}
		return ""
	}},
	{name: "top_p", apis: apiBoth, kind: kindNumber, nullable: true, check: func(v float64) string {
		if !(v > 0 && v <= 1) {
			return "must be in (0, 1]"
		}
		return ""
	}},
	{name: "top_k", apis: apiBoth, kind: kindInteger, nullable: true, check: func(v float64) string {
		if v < -1 {
			return "must be 0 (disable), or at least 1"
		}
		return ""
	}},
	{name: "min_p", apis: apiBoth, kind: kindNumber, nullable: true, check: within(0, 1)},
	{name: "n", apis: apiBoth, kind: kindInteger, nullable: true, check: atLeast(1)},
	{name: "seed", apis: apiBoth, kind: kindInteger, nullable: true, check: func(v float64) string {
		if v < math.MinInt64 || v >= math.MaxInt64 {
			return "must be a 64-bit signed integer"
		}
		return ""
	}},
	{name: "stop", apis: apiBoth, kind: kindStop, nullable: true},
	{name: "stop_token_ids", apis: apiBoth, kind: kindIntArray, nullable: true},
	{name: "stream", apis: apiBoth, kind: kindBool, nullable: true},
	{name: "stream_options", apis: apiBoth, kind: kindObject, nullable: true},
	{name: "max_completion_tokens", apis: apiChat, kind: kindInteger, nullable: true, check: atLeast(1)},
	{name: "max_tokens", apis: apiBoth, kind: kindInteger, nullable: true, check: atLeast(1)},
	{name: "min_tokens", apis: apiBoth, kind: kindInteger, check: atLeast(0)},
	{name: "logprobs", apis: apiChat, kind: kindBool, nullable: true},
	{name: "logprobs", apis: apiCompletions, kind: kindInteger, nullable: true, check: func(v float64) string {
		if v < 0 && v != -1 {
			return "must be non-negative or -1"
		}
		return ""
	}},
	{name: "top_logprobs", apis: apiChat, kind: kindInteger, nullable: true, check: func(v float64) string {
		if v < 0 && v != -1 {
			return "must be a positive value or -1"
		}
		return ""
	}},
	{name: "logit_bias", apis: apiBoth, kind: kindObject, nullable: true},
	{name: "ignore_eos", apis: apiBoth, kind: kindBool},
	{name: "include_stop_str_in_output", apis: apiBoth, kind: kindBool},
	{name: "skip_special_tokens", apis: apiBoth, kind: kindBool},
	{name: "echo", apis: apiChat, kind: kindBool},
	{name: "echo", apis: apiCompletions, kind: kindBool, nullable: true},
	{name: "user", apis: apiBoth, kind: kindString, nullable: true},
	// vLLM's chat template and tokenizer parameters: the first changes the
	// rendering (see appendPrompt), the deterministic tokenizer has no
	// special tokens to add.
	{name: "add_generation_prompt", apis: apiChat, kind: kindBool},
	{name: "add_special_tokens", apis: apiBoth, kind: kindBool},
}

func within(lo, hi float64) func(float64) string {
	return func(v float64) string {
		if !(v >= lo && v <= hi) {
			return fmt.Sprintf("must be in [%g, %g]", lo, hi)
		}
		return ""
	}
}

func atLeast(lo float64) func(float64) string {
	return func(v float64) string {
		if !(v >= lo) {
			return fmt.Sprintf("must be at least %g", lo)
		}
		return ""
	}
}

// sampling is what a generation request asks for, once validated.
type sampling struct {
	// maxTokens is the output limit the client gave (chat:
	// max_completion_tokens first) and maxTokensParam the field it came from;
	// maxTokens is 0 when neither was given.
	maxTokens      int
	maxTokensParam string
	stream         bool
	includeUsage   bool
}

// parseSampling checks a chat (chat true) or completions request's
// parameters against sampleRules and vLLM's cross-field rules and returns
// what the simulator uses of them.
func parseSampling(obj openai.Object, chat bool) (sampling, *paramError) {
	api := uint8(apiCompletions)
	if chat {
		api = apiChat
	}
	var sp sampling
	var n, topLogprobs, minTokens float64 = 1, 0, 0
	for i := range sampleRules {
		r := &sampleRules[i]
		if r.apis&api == 0 {
			continue
		}
		raw, ok := obj.Get(r.name)
		if !ok || (r.nullable && string(raw) == "null") {
			continue
		}
		v, err := checkParam(r, raw)
		if err != nil {
			return sp, err
		}
		switch r.name {
		case "n":
			n = v
		case "top_logprobs":
			topLogprobs = v
		case "min_tokens":
			minTokens = v
		case "max_completion_tokens", "max_tokens":
			if sp.maxTokensParam == "" { // chat: max_completion_tokens first
				sp.maxTokens = int(min(v, 1<<62)) // beyond any context length
				sp.maxTokensParam = r.name
			}
		}
	}

	if n != 1 {
		return sp, &paramError{"n", "invalid_n", fmt.Sprintf(`the simulator supports only "n": 1, got %g`, n)}
	}
	sp.stream = obj.Bool("stream")
	if raw, ok := obj.Get("stream_options"); ok && string(raw) != "null" {
		opts, _ := openai.Parse(raw) // an object, as checked
		for _, key := range []string{"include_usage", "continuous_usage_stats"} {
			if v, ok := opts.Get(key); ok && string(v) != "null" && jsonKind(v) != "a boolean" {
				return sp, &paramError{"stream_options." + key, "invalid_stream_options",
					fmt.Sprintf(`"stream_options.%s" must be a boolean, got %s`, key, jsonKind(v))}
			}
		}
		// vLLM rejects stream options (any but an empty object) without
		// streaming.
		if !sp.stream && string(trimObject(raw)) != "{}" {
			return sp, &paramError{"stream_options", "invalid_stream_options", "Stream options can only be defined when `stream=True`."}
		}
		sp.includeUsage = opts.Bool("include_usage")
	}
	if chat && (topLogprobs > 0 || topLogprobs == -1) && !obj.Bool("logprobs") {
		return sp, &paramError{"top_logprobs", "invalid_top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true."}
	}
	if sp.maxTokensParam != "" && minTokens > float64(sp.maxTokens) {
		return sp, &paramError{"min_tokens", "invalid_min_tokens",
			fmt.Sprintf("min_tokens must be less than or equal to max_tokens=%d, got %g.", sp.maxTokens, minTokens)}
	}
	return sp, nil
}

// checkParam checks one present parameter's type and range; numbers are
// returned.
func checkParam(r *paramRule, raw []byte) (float64, *paramError) {
	code := "invalid_" + r.name
	if r.name == "max_completion_tokens" {
		code = "invalid_max_tokens"
	}
	bad := func(format string, args ...any) *paramError {
		return &paramError{r.name, code, fmt.Sprintf("%q ", r.name) + fmt.Sprintf(format, args...)}
	}
	kind := jsonKind(raw)
	switch r.kind {
	case kindNumber, kindInteger:
		if kind != "a number" {
			return 0, bad("must be %s, got %s", r.kind, kind)
		}
		v, err := strconv.ParseFloat(string(raw), 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) { // out of range: ±Inf, checked below
			return 0, bad("must be %s, got %s", r.kind, clip(raw))
		}
		if r.kind == kindInteger && (v != math.Trunc(v) || math.IsInf(v, 0)) {
			return 0, bad("must be an integer, got %s", clip(raw))
		}
		if r.check != nil {
			if why := r.check(v); why != "" {
				return 0, bad("%s, got %s", why, clip(raw))
			}
		}
		return v, nil
	case kindBool:
		if kind != "a boolean" {
			return 0, bad("must be a boolean, got %s", kind)
		}
	case kindString:
		if kind != "a string" {
			return 0, bad("must be a string, got %s", kind)
		}
	case kindObject:
		if kind != "an object" {
			return 0, bad("must be an object, got %s", kind)
		}
	case kindStop:
		var one string
		var many []string
		switch {
		case json.Unmarshal(raw, &one) == nil:
			many = []string{one}
		case json.Unmarshal(raw, &many) == nil:
		default:
			return 0, bad("must be a string or an array of strings, got %s", kind)
		}
		for _, s := range many {
			if s == "" {
				return 0, bad("cannot contain an empty string")
			}
		}
	case kindIntArray:
		var ids []int64
		if json.Unmarshal(raw, &ids) != nil {
			return 0, bad("must be an array of integers")
		}
	}
	return 0, nil
}

// clip shortens a raw value quoted in an error message.
func clip(raw []byte) []byte {
	if len(raw) > 32 {
		return append(raw[:32:32], "..."...)
	}
	return raw
}

// trimObject removes the whitespace inside an empty JSON object, so "{ }"
// reads as "{}".
func trimObject(raw []byte) []byte {
	out := make([]byte, 0, 2)
	for _, c := range raw {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			out = append(out, c)
			if len(out) > 2 {
				break
			}
		}
	}
	return out
}
