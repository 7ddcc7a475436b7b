package queueproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"

	"github.com/kvasir-serving/kvasir/pkg/stats"
)

// modelsPath is the engine's OpenAI model list, where LoRA adapters appear
// with a parent (vLLM, SGLang, and the simulator).
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

// modelList is one read of the engine's model list.
type modelList struct {
	base, adapters map[string]struct{} // every name listed, for the KV model
	// cards are the cards for the stats, base models first, within the
	// bounds of stats.BoundModelCards.
	cards []stats.ModelCard
}

// kvScraped adapts the KV model to a scrape of the engine's metrics: block
// size and capacity, and an engine restart (its prefix cache counters went
// back). The engine's model list reaches it through scrapeModels.
func (p *Proxy) kvScraped(_ context.Context, es, prev stats.EngineStat) {
	if p.kv == nil {
		return
	}
	restarted := es.Scraped && prev.Scraped && es.PrefixCacheQuery < prev.PrefixCacheQuery
	if es.Scraped {
		p.kv.configure(es.BlockSize, es.NumGPUBlocks, restarted)
	}
}

// scrapeModels reads the engine's model list, at every scrape whether or
// not the KV cache is modelled: its cards go to the stats (es.Models) and
// its names to the KV model, with the running adapters of es. When no list
// can be read (a custom engine without the path, an answer that is not a
// model list, an engine not up yet) the last cards and names stay.
func (p *Proxy) scrapeModels(ctx context.Context, es *stats.EngineStat) {
	list, err := p.fetchModels(ctx)
	if err != nil {
		p.log.Debug("engine model list unavailable; keeping the last one", slog.Any("error", err))
		p.mu.Lock()
		es.Models = p.engineStat.Models
		p.mu.Unlock()
	} else {
		es.Models = list.cards
		adapters := maps.Clone(list.adapters) // the KV model adds to list.adapters
		p.engineAdapters.Store(&adapters)
	}
	if p.kv == nil {
		return
	}
	em := &engineModels{base: map[string]struct{}{}, adapters: map[string]struct{}{}}
	switch old := p.kv.models.Load(); {
	case err == nil: // the list's maps are this read's own
		em.listed, em.base, em.adapters = true, list.base, list.adapters
	case old != nil && old.listed: // keep the last list through a failed fetch
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

// engineCard is one entry of an engine's model list as read. A field of
// another type than vLLM's ModelCard gives it is left out (encoding/json
// skips it and reports an *json.UnmarshalTypeError, which engineCards
// ignores); so is an entry that is not an object.
type engineCard struct {
	ID          string   `json:"id"`
	Root        string   `json:"root"`
	Parent      string   `json:"parent"` // null for a base model
	OwnedBy     string   `json:"owned_by"`
	MaxModelLen *float64 `json:"max_model_len"`
}

// errNotModelList is an engine answer to /v1/models without a "data" array.
var errNotModelList = errors.New("not an OpenAI model list")

// engineCards is the "data" array of a model list.
type engineCards []engineCard

// UnmarshalJSON reads an array, whatever odd fields its entries have.
func (l *engineCards) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || b[0] != '[' {
		return errNotModelList
	}
	err := json.Unmarshal(b, (*[]engineCard)(l))
	if _, odd := errors.AsType[*json.UnmarshalTypeError](err); odd {
		return nil // the odd fields were skipped, the rest is read
	}
	return err
}

// fetchModels reads the engine's model list: names without a parent (or
// their own parent) are base models, the others LoRA adapters. Entries
// without a string id are skipped.
func (p *Proxy) fetchModels(ctx context.Context) (modelList, error) {
	body, err := p.readModels(ctx)
	if err != nil {
		return modelList{}, err
	}
	var list struct {
		Data *engineCards `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return modelList{}, fmt.Errorf("decode engine model list: %w", err)
	}
	if list.Data == nil {
		return modelList{}, fmt.Errorf("decode engine model list: %w", errNotModelList)
	}
	ml := modelList{base: map[string]struct{}{}, adapters: map[string]struct{}{}}
	var bases, adapters []stats.ModelCard
	for _, ec := range *list.Data {
		if ec.ID == "" {
			continue
		}
		c := stats.ModelCard{ID: ec.ID, Root: ec.Root, Parent: ec.Parent, OwnedBy: ec.OwnedBy, MaxModelLen: count64(ec.MaxModelLen)}
		if c.Parent == c.ID {
			c.Parent = ""
		}
		if c.Parent == "" {
			ml.base[c.ID] = struct{}{}
			bases = append(bases, c)
		} else {
			ml.adapters[c.ID] = struct{}{}
			adapters = append(adapters, c)
		}
	}
	// Base models first: when the bounds cut the list, the model the
	// service is named after is the last card to go.
	ml.cards = stats.BoundModelCards(append(bases, adapters...))
	return ml, nil
}

// readModels GETs the engine's model list, at most maxModelsBytes of it,
// within a scrape interval; decoding it takes no part of that time.
func (p *Proxy) readModels(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ScrapeInterval)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.engineURL(modelsPath), nil)
	if err != nil {
		return nil, fmt.Errorf("build model list request: %w", err)
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("fetch engine model list: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("fetch engine model list: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxModelsBytes+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("read engine model list: %w", err)
	case len(body) > maxModelsBytes:
		return nil, fmt.Errorf("engine model list larger than %d bytes", maxModelsBytes)
	}
	return body, nil
}

// count64 is a JSON number that is a whole count in 1..stats.MaxModelLen;
// 0 for anything else (absent, null, negative, fractional, huge).
func count64(v *float64) int {
	if v == nil || *v < 1 || *v > stats.MaxModelLen || *v != math.Trunc(*v) {
		return 0
	}
	return int(*v)
}
