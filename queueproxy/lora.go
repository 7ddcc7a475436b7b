package queueproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	enginepkg "github.com/kvasir-serving/kvasir/pkg/engine"
)

// Runtime LoRA adapters. A revision's engines start with the adapters the
// service had when the revision was created (startup flags); adapters added
// to spec.loraAdapters later, or removed, change no revision: the runtime
// keeps a file with the service's adapters current (kvasir local writes it;
// on Kubernetes it is a ConfigMap volume), and the queue-proxy makes its
// engine's loaded adapters match it, through the engine's load and unload
// endpoints (vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter).
// What the engine has loaded is what its model list says (scrapeModels).

// maxLoRAFileBytes bounds --lora-adapters-file.
const maxLoRAFileBytes = 1 << 20

// loraRetry bounds how often a failed load or unload of one adapter is
// tried again.
const (
	loraRetryMin = time.Second
	loraRetryMax = 30 * time.Second
)

// loraOp is what the reconciler did last to an adapter, and when it may
// act on it again.
type loraOp struct {
	load    bool
	next    time.Time
	backoff time.Duration
}

// loraReconciler makes the engine's adapters match the file. It runs in
// one goroutine (Proxy.Run) and owns its state.
type loraReconciler struct {
	p       *Proxy
	path    string
	ops     map[string]*loraOp
	now     func() time.Time
	lastErr string // the file's last error, logged once
}

// readLoRAFile reads and checks the adapters file.
func readLoRAFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLoRAFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxLoRAFileBytes {
		return nil, fmt.Errorf("%s: over %d bytes", path, maxLoRAFileBytes)
	}
	var doc enginepkg.LoRAFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.LoRAAdapters) > v1alpha1.MaxLoRAAdapters {
		return nil, fmt.Errorf("%s: %d adapters; at most %d", path, len(doc.LoRAAdapters), v1alpha1.MaxLoRAAdapters)
	}
	for _, a := range doc.LoRAAdapters {
		if a == "" || len(a) > v1alpha1.MaxModelNameLength || strings.HasPrefix(a, "-") || strings.ContainsAny(a, "@=, \t\x00\r\n") {
			return nil, fmt.Errorf("%s: adapter name %q is not valid", path, a)
		}
	}
	return doc.LoRAAdapters, nil
}

// tick compares the file with what the engine has loaded and loads or
// unloads what differs, each adapter at most once per retry period.
func (l *loraReconciler) tick(ctx context.Context) {
	if !l.p.health.Ready() {
		return
	}
	loaded := l.p.engineAdapters.Load()
	if loaded == nil {
		return // the engine's model list has not been read yet
	}
	want, err := readLoRAFile(l.path)
	if err != nil {
		if msg := err.Error(); msg != l.lastErr && !errors.Is(err, os.ErrNotExist) {
			l.p.log.Warn("LoRA adapters file unreadable; adapters left as they are", slog.Any("error", err))
			l.lastErr = msg
		}
		return
	}
	l.lastErr = ""
	desired := make(map[string]bool, len(want))
	for _, a := range want {
		desired[a] = true
	}
	now := l.now()
	act := func(name string, load bool) {
		op := l.ops[name]
		if op != nil && op.load == load && now.Before(op.next) {
			return
		}
		if op == nil || op.load != load {
			op = &loraOp{load: load, backoff: loraRetryMin}
			l.ops[name] = op
		}
		err := l.p.loraCall(ctx, name, load)
		l.p.metrics.loraOps.WithLabelValues(opName(load), resultOf(err)).Inc()
		if err != nil {
			l.p.log.Warn("LoRA adapter "+opName(load)+" failed; will retry", slog.String("adapter", name),
				slog.Duration("retryIn", op.backoff), slog.Any("error", err))
			op.next = now.Add(op.backoff)
			op.backoff = min(2*op.backoff, loraRetryMax)
			return
		}
		l.p.log.Info("LoRA adapter "+opName(load)+"ed", slog.String("adapter", name))
		// The engine's model list shows it at the next scrape; until then
		// the same call is not repeated, and an engine that never lists it
		// is asked less and less often.
		op.next = now.Add(max(2*l.p.cfg.ScrapeInterval, op.backoff))
		op.backoff = min(2*op.backoff, loraRetryMax)
	}
	for _, a := range slices.Sorted(maps.Keys(desired)) {
		if _, ok := (*loaded)[a]; !ok {
			act(a, true)
		}
	}
	for _, a := range slices.Sorted(maps.Keys(*loaded)) {
		if !desired[a] {
			act(a, false)
		}
	}
	for name, op := range l.ops { // forget settled adapters
		_, isLoaded := (*loaded)[name]
		if op.load == isLoaded && !now.Before(op.next) {
			delete(l.ops, name)
		}
	}
}

func opName(load bool) string {
	if load {
		return "load"
	}
	return "unload"
}

func resultOf(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// loraCall asks the engine to load or unload an adapter (its name is its
// path).
func (p *Proxy) loraCall(ctx context.Context, name string, load bool) error {
	path, body := p.cfg.LoRAUnloadPath, map[string]string{"lora_name": name}
	if load {
		path, body["lora_path"] = p.cfg.LoRALoadPath, name
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, loraCallTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.engineURL(path), bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// loraCallTimeout bounds one load or unload: loading fetches weights.
const loraCallTimeout = 5 * time.Minute
