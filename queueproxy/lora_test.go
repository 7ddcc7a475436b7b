package queueproxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	engineapi "github.com/kvasir-serving/kvasir/pkg/engine"
)

// loraEngine is an engine whose adapters are loaded and unloaded at run
// time, as vLLM's with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
type loraEngine struct {
	mu       sync.Mutex
	adapters map[string]string // name -> path
	calls    []string
	fail     map[string]int // load failures left, by name
}

func (e *loraEngine) handlers() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"GET /v1/models": func(w http.ResponseWriter, r *http.Request) {
			e.mu.Lock()
			defer e.mu.Unlock()
			data := []map[string]any{{"id": "m", "object": "model", "max_model_len": 4096}}
			for name, path := range e.adapters {
				data = append(data, map[string]any{"id": name, "object": "model", "root": path, "parent": "m"})
			}
			_ = json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": data})
		},
		"POST /v1/load_lora_adapter": func(w http.ResponseWriter, r *http.Request) {
			var req struct{ LoRAName, LoRAPath string }
			body, _ := io.ReadAll(r.Body)
			var m map[string]string
			_ = json.Unmarshal(body, &m)
			req.LoRAName, req.LoRAPath = m["lora_name"], m["lora_path"]
			e.mu.Lock()
			defer e.mu.Unlock()
			e.calls = append(e.calls, "load "+req.LoRAName)
			if e.fail[req.LoRAName] > 0 {
				e.fail[req.LoRAName]--
				http.Error(w, "cannot fetch weights", http.StatusInternalServerError)
				return
			}
			e.adapters[req.LoRAName] = req.LoRAPath
			fmt.Fprintf(w, "Success: LoRA adapter '%s' added successfully.", req.LoRAName)
		},
		"POST /v1/unload_lora_adapter": func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			var m map[string]string
			_ = json.Unmarshal(body, &m)
			e.mu.Lock()
			defer e.mu.Unlock()
			e.calls = append(e.calls, "unload "+m["lora_name"])
			delete(e.adapters, m["lora_name"])
		},
	}
}

func (e *loraEngine) loaded() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for n := range e.adapters {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func writeAdapters(t *testing.T, path string, doc string) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(doc), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

// The engine's adapters follow the file: added ones are loaded, removed
// ones unloaded, a failed load is tried again, and a broken file changes
// nothing.
func TestLoRAAdaptersFollowTheFile(t *testing.T) {
	le := &loraEngine{adapters: map[string]string{"a": "a"}, fail: map[string]int{"c": 1}}
	eng := newEngine(t, le.handlers())
	file := filepath.Join(t.TempDir(), "lora-adapters.json")
	writeAdapters(t, file, `{"loraAdapters": ["a"]}`)
	p := newProxy(t, eng.URL, true, "--lora-adapters-file="+file, "--scrape-interval=10ms")

	writeAdapters(t, file, `{"loraAdapters": ["a", "b"]}`)
	require.Eventually(t, func() bool { return slices.Equal(le.loaded(), []string{"a", "b"}) }, waitFor, tick)

	writeAdapters(t, file, `{"loraAdapters": ["b", "c"]}`) // c fails once
	require.Eventually(t, func() bool { return slices.Equal(le.loaded(), []string{"b", "c"}) }, waitFor, tick)
	assert.Equal(t, 1.0, testutil.ToFloat64(p.metrics.loraOps.WithLabelValues("load", "error")))

	// Hostile or broken files leave the adapters as they are.
	for _, doc := range []string{`{"loraAdapters": ["x@tag"]}`, `not json`, `{"loraAdapters": ["b"], "extra": 1}`,
		`{"loraAdapters": [""]}`} {
		writeAdapters(t, file, doc)
		p.awaitScrapes(t, 3)
		require.Equal(t, []string{"b", "c"}, le.loaded(), doc)
	}
	require.NoError(t, os.Remove(file))
	p.awaitScrapes(t, 3)
	require.Equal(t, []string{"b", "c"}, le.loaded(), "a missing file changes nothing")

	writeAdapters(t, file, `{"loraAdapters": []}`)
	require.Eventually(t, func() bool { return len(le.loaded()) == 0 }, waitFor, tick)
	le.mu.Lock()
	defer le.mu.Unlock()
	// Each change was asked once: no call is repeated while the engine's
	// list catches up (c's failed load is the one retry).
	for _, call := range []string{"load b", "unload a", "unload b", "unload c"} {
		assert.Equal(t, 1, occurrences(le.calls, call), "%s in %v", call, le.calls)
	}
	assert.Equal(t, 2, occurrences(le.calls, "load c"), "%v", le.calls)
}

func occurrences(xs []string, x string) int {
	n := 0
	for _, y := range xs {
		if y == x {
			n++
		}
	}
	return n
}

// awaitScrapes waits until n more scrapes of the engine's models happened.
func (p *proxy) awaitScrapes(t *testing.T, n int) {
	t.Helper()
	for range n {
		before := p.engineAdapters.Load()
		require.Eventually(t, func() bool { return p.engineAdapters.Load() != before }, waitFor, tick)
	}
}

func TestReadLoRAFileBounds(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.json")
	require.NoError(t, os.WriteFile(big, make([]byte, maxLoRAFileBytes+10), 0o600))
	_, err := readLoRAFile(big)
	require.ErrorContains(t, err, "over")
	many := filepath.Join(dir, "many.json")
	names := make([]string, 300)
	for i := range names {
		names[i] = fmt.Sprintf("a%d", i)
	}
	b, _ := json.Marshal(engineapi.LoRAFile{LoRAAdapters: names})
	require.NoError(t, os.WriteFile(many, b, 0o600))
	_, err = readLoRAFile(many)
	require.ErrorContains(t, err, "at most 256")
}
