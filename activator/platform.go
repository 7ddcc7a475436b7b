package activator

import (
	"net/http"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// Top-level request fields only the platform may set for engines (see
// PlatformFields).
const (
	// FieldKVTransferParams carries vLLM's KV-connector instructions. The
	// activator sets it on both halves of a prefill/decode request (pd.go);
	// from a client it could make an engine pull KV blocks from a host the
	// client names, or skip a prefill.
	FieldKVTransferParams = "kv_transfer_params"
	// FieldBootstrapHost, FieldBootstrapPort and FieldBootstrapRoom are
	// SGLang's equivalent for its prefill/decode disaggregation, set by the
	// router in front of the engines: from a client they could point a
	// decode engine at a host the client names.
	FieldBootstrapHost = "bootstrap_host"
	FieldBootstrapPort = "bootstrap_port"
	FieldBootstrapRoom = "bootstrap_room"
)

// platformFields lists the constants above; never modified.
var platformFields = [...]string{FieldKVTransferParams, FieldBootstrapHost, FieldBootstrapPort, FieldBootstrapRoom}

// PlatformFields returns the top-level request fields only the platform
// may set for engines. A client body (HTTP or WebSocket message) holding
// one is refused with 400 (invalid_request_error, code "platform_field",
// param the field), never stripped silently. Keys match as JSON decoders
// read them (escapes decoded). The WebSocket protocol's own "request_id" is
// not in the list: the activator removes it before forwarding.
func PlatformFields() []string { return append([]string(nil), platformFields[:]...) }

// platformFieldFailure is the 400 for a client body that sets a platform
// field, nil when it sets none.
func platformFieldFailure(obj openai.Object) *failure {
	for i := range platformFields {
		if _, ok := obj.Get(platformFields[i]); ok {
			f := platformFields[i] // escapes (Param) only when it is the answer
			e := openai.Err(openai.TypeInvalidRequest, "platform_field",
				"`"+f+"` is set by the platform for its engines and cannot be sent by clients")
			e.Param = &f
			return &failure{status: http.StatusBadRequest, err: e}
		}
	}
	return nil
}
