package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"
)

// The keys of the tenants of TestAuthThroughLocal: one read from kvasir
// local's environment, one given by its SHA-256 in the file.
const (
	e2eKeyEnv     = "KVASIR_E2E_TEAM_A_KEY"
	e2eKey        = "sk-e2e-team-a-7f3c9b2d41e8"
	e2eLimitedKey = "sk-e2e-limited-5a0d6e1c93b7"
)

func sha256Hex(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func authDoc() string {
	return demo + `---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys: [{fromEnv: ` + e2eKeyEnv + `}]
  models: [demo]
---
apiVersion: serving.kvasir.dev/v1alpha1
kind: Tenant
metadata: {name: limited}
spec:
  apiKeys: [{sha256: "` + sha256Hex(e2eLimitedKey) + `"}]
  models: [something-else]
`
}

func keyed(p *platform, key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(p.URL+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

// requireAPIError checks that err is the SDK's error of status and code.
func requireAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var apiErr *openai.Error
	require.True(t, errors.As(err, &apiErr), "an API error: %v", err)
	require.Equal(t, status, apiErr.StatusCode, apiErr.RawJSON())
	require.Equal(t, code, apiErr.Code, apiErr.RawJSON())
}

func TestAuthThroughLocal(t *testing.T) {
	t.Setenv(e2eKeyEnv, e2eKey) // kvasir local inherits the test's environment
	p := startLocal(t, authDoc())
	ctx := context.Background()
	require.Contains(t, p.logs.String(), "tenants=2")

	teamA, wrong, limitedC := keyed(p, e2eKey), keyed(p, "sk-e2e-wrong"), keyed(p, e2eLimitedKey)
	resp, err := teamA.Chat.Completions.New(ctx, chatParams("Hello with a key", 4))
	require.NoError(t, err, "a tenant's key works")
	require.NotEmpty(t, resp.Choices[0].Message.Content)

	models, err := teamA.Models.List(ctx)
	require.NoError(t, err)
	require.Len(t, models.Data, 1)
	require.Equal(t, "demo", models.Data[0].ID)

	_, err = wrong.Chat.Completions.New(ctx, chatParams("Hello with a wrong key", 4))
	requireAPIError(t, err, http.StatusUnauthorized, "invalid_api_key")

	_, err = limitedC.Chat.Completions.New(ctx, chatParams("Hello, not mine", 4))
	requireAPIError(t, err, http.StatusForbidden, "model_not_allowed")
	limited, err := limitedC.Models.List(ctx)
	require.NoError(t, err)
	require.Empty(t, limited.Data, "a tenant lists only the models it may call")

	// A browser's WebSocket: the key in the first message.
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(p.URL, "http")+"/v1/chat/completions", nil)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(60*time.Second)))
	require.NoError(t, conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"auth","api_key":"`+e2eKey+`"}`)))
	_, raw, err := conn.ReadMessage()
	require.NoError(t, err)
	require.JSONEq(t, `{"type":"auth","ok":true}`, string(raw))
	require.NoError(t, conn.WriteMessage(websocket.TextMessage,
		[]byte(`{"request_id":1,"model":"demo","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)))
	for {
		_, raw, err := conn.ReadMessage()
		require.NoError(t, err)
		var m wsMessage
		require.NoError(t, json.Unmarshal(raw, &m), string(raw))
		require.Nil(t, m.Error, string(raw))
		if m.Type == "done" {
			break
		}
	}

	p.stop() // the whole log, to the end
	for _, k := range []string{e2eKey, e2eLimitedKey, "sk-e2e-wrong"} {
		require.NotContains(t, p.logs.String(), k, "a key in kvasir local's log")
	}
}

func TestAuthRequiredRefusesAnOpenStart(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "models.yaml")
	require.NoError(t, os.WriteFile(file, []byte(demo), 0o644))
	out, err := exec.Command(kvasirBin, "local", "-f", file, "--addr", "127.0.0.1:0", "--admin-addr", "",
		"--log-dir", filepath.Join(dir, "logs"), "--require-auth").CombinedOutput()
	require.Error(t, err, "kvasir local serves open despite --require-auth:\n%s", out)
	require.Contains(t, string(out), "--require-auth")
}
