package sim

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/kvasir-serving/kvasir/pkg/openai"
)

// TestDuplicateKeyIsNamed: the simulator refuses a body with a key twice
// (openai.Parse does) and says so, rather than calling it malformed JSON.
func TestDuplicateKeyIsNamed(t *testing.T) {
	ts := startServer(t, nil)
	status, body := ts.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1,"max_t\u006fkens":2}`)
	assert.Equal(t, 400, status, "%s", body)
	e := decode[openai.Envelope](t, body)
	assert.Equal(t, "duplicate_key", e.Error.Code)
	assert.Contains(t, e.Error.Message, `"max_tokens"`)
}
