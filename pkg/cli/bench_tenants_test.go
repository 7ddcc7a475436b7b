package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBenchRunTenants(t *testing.T) {
	var mu sync.Mutex
	auths := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		auths[r.Header.Get("Authorization")]++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":10,"completion_tokens":2}}`)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	tenants := filepath.Join(dir, "tenants.yaml")
	require.NoError(t, os.WriteFile(tenants, []byte(`
- {name: heavy, keyFromEnv: CLI_HEAVY_KEY, rate: 400, num-prompts: 8}
- {name: light, keyFromEnv: CLI_LIGHT_KEY, rate: 50, num-prompts: 2}
`), 0o600))
	args := []string{"bench", "run", "--target", srv.URL, "--model", "m", "--stream=false", "--tenants", tenants}

	for _, tc := range []struct {
		name     string
		light    string // CLI_LIGHT_KEY, "" = unset
		wantCode int
		wantErr  string
	}{
		{"key variable unset", "", 2, "tenants[1].keyFromEnv: environment variable CLI_LIGHT_KEY is not set"},
		{"both keys set", "light-key", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CLI_HEAVY_KEY", "heavy-key")
			t.Setenv("CLI_LIGHT_KEY", tc.light)
			jsonPath := filepath.Join(t.TempDir(), "out.json")
			var stdout, stderr bytes.Buffer
			err := Main(context.Background(), append(args, "--json", jsonPath), &stdout, &stderr)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Equal(t, tc.wantCode, ExitCode(err))
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Contains(t, stderr.String(), "kvasir bench: 2 tenants (+0 warm-up each) to "+srv.URL+
				": heavy: 8 random requests, model m, 400 req/s (poisson), max concurrency unlimited; light: 2 random requests")
			assert.Contains(t, stdout.String(), " Tenants (latencies in ms) ")
			mu.Lock()
			assert.Equal(t, map[string]int{"Bearer heavy-key": 8, "Bearer light-key": 2}, auths)
			mu.Unlock()
			b, err := os.ReadFile(jsonPath)
			require.NoError(t, err)
			var res struct {
				Tenants []struct {
					Name              string  `json:"name"`
					Completed         int     `json:"completed"`
					TokensServedShare float64 `json:"tokens_served_share"`
				} `json:"tenants"`
			}
			require.NoError(t, json.Unmarshal(b, &res))
			require.Len(t, res.Tenants, 2)
			assert.Equal(t, "heavy", res.Tenants[0].Name)
			assert.Equal(t, 8, res.Tenants[0].Completed)
			assert.InDelta(t, 0.8, res.Tenants[0].TokensServedShare, 1e-12)
			assert.InDelta(t, 0.2, res.Tenants[1].TokensServedShare, 1e-12)
		})
	}
}
