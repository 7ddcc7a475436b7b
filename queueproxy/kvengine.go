package queueproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// modelsPath is the engine's OpenAI model list, where LoRA adapters appear
// with a parent (vLLM, and the simulator).
const modelsPath = "/v1/models"

// maxModelsBytes bounds the engine's model list.
const maxModelsBytes = 4 << 20

// engineModels is what the KV model knows of the names the engine serves,
// to tell a LoRA adapter (whose blocks are salted) from the base model.
type engineModels struct {
	listed   bool                // the engine's model list was read
	base     map[string]struct{} // listed without a parent
	adapters map[string]struct{} // listed with a parent, or running per vllm:lora_requests_info
}

// kvScraped adapts the KV model to a scrape of the engine's metrics: block
// size and capacity, an engine restart (its prefix cache counters went
// back), and, while modelling, the engine's model list.
func (p *Proxy) kvScraped(ctx context.Context, es, prev stats.EngineStat) {
	if p.kv == nil {
		return
	}
	restarted := es.Scraped && prev.Scraped && es.PrefixCacheQuery < prev.PrefixCacheQuery
	if es.Scraped {
		p.kv.configure(es.BlockSize, es.NumGPUBlocks, restarted)
	}
	if p.kv.shape.Load() == nil {
		return // not modelling: no need to know the models
	}
	old := p.kv.models.Load()
	em := &engineModels{base: map[string]struct{}{}, adapters: map[string]struct{}{}}
	base, adapters, err := p.fetchModels(ctx)
	switch {
	case err == nil:
		em.listed, em.base, em.adapters = true, base, adapters
	case old != nil && old.listed: // keep the last list through a failed fetch
		p.log.Debug("engine model list unavailable; keeping the last one", slog.Any("error", err))
		em.listed = true
		for n := range old.base {
			em.base[n] = struct{}{}
		}
		for n := range old.adapters {
			em.adapters[n] = struct{}{}
		}
	}
	for _, a := range es.LoRAAdapters {
		em.adapters[a] = struct{}{}
	}
	p.kv.models.Store(em)
}

// fetchModels reads the engine's model list: names without a parent are
// base models, those with one LoRA adapters.
func (p *Proxy) fetchModels(ctx context.Context) (base, adapters map[string]struct{}, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ScrapeInterval)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.engineURL(modelsPath), nil)
	if err != nil {
		return nil, nil, fmt.Errorf("build model list request: %w", err)
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return nil, nil, fmt.Errorf("fetch engine model list: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, nil, fmt.Errorf("fetch engine model list: status %d", resp.StatusCode)
	}
	var list struct {
		Data []struct {
			ID     string  `json:"id"`
			Parent *string `json:"parent"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxModelsBytes)).Decode(&list); err != nil {
		return nil, nil, fmt.Errorf("decode engine model list: %w", err)
	}
	base, adapters = map[string]struct{}{}, map[string]struct{}{}
	for _, m := range list.Data {
		if m.Parent != nil && *m.Parent != "" && *m.Parent != m.ID {
			adapters[m.ID] = struct{}{}
		} else {
			base[m.ID] = struct{}{}
		}
	}
	return base, adapters, nil
}
