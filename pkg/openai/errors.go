package openai

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Error types as the OpenAI API names them.
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeNotFound       = "not_found_error"
	TypeRateLimit      = "rate_limit_error"
	TypeServer         = "server_error"
	TypeUnavailable    = "service_unavailable_error"
	TypeTimeout        = "timeout_error"
)

// Error is the body of an OpenAI-shaped error: {"error": {...}}.
type Error struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

// Envelope wraps Error as it travels on the wire.
type Envelope struct {
	Error Error `json:"error"`
}

// JSON renders the error envelope.
func (e Error) JSON() []byte {
	b, _ := json.Marshal(Envelope{Error: e}) // cannot fail: only strings
	return b
}

// Err builds an Error with the given type, code and message.
func Err(typ, code, msg string) Error { return Error{Message: msg, Type: typ, Code: code} }

// WriteError writes an OpenAI-shaped error with the given status. For 429 and
// 503 a Retry-After header is set when retryAfter > 0.
func WriteError(w http.ResponseWriter, status int, e Error, retryAfter time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if retryAfter > 0 {
		secs := int((retryAfter + time.Second - 1) / time.Second)
		h.Set("Retry-After", strconv.Itoa(secs))
	}
	w.WriteHeader(status)
	_, _ = w.Write(e.JSON())
}

// Common errors of the data-plane contract (design.md).
var (
	ErrMalformedJSON = Err(TypeInvalidRequest, "invalid_json", "request body is not valid JSON")
	ErrMissingModel  = Err(TypeInvalidRequest, "model_required", `request body has no "model" field`)
	ErrBodyTooLarge  = Err(TypeInvalidRequest, "request_too_large", "request body exceeds the size limit")
)

// ParseError is the 400 error for a body Parse refused: code
// "duplicate_key" (param: the key) for a key given twice, "invalid_json"
// otherwise.
func ParseError(err error) Error {
	if dup, ok := errors.AsType[*DuplicateKeyError](err); ok {
		e := Err(TypeInvalidRequest, "duplicate_key", dup.Error())
		e.Param = &dup.Key
		return e
	}
	return Err(TypeInvalidRequest, "invalid_json", err.Error())
}

// ModelNotFound is the 404 for a model no service serves.
func ModelNotFound(model string) Error {
	return Err(TypeNotFound, "model_not_found", "The model `"+model+"` does not exist")
}
