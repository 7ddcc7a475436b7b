package activator

import (
	"sort"
	"sync"

	"github.com/kvasir-serving/kvasir/pkg/stats"
	"github.com/kvasir-serving/kvasir/pkg/traffic"
)

// The model list. /v1/models lists Kvasir's names (each service's model and
// its LoRA adapters) and nothing else; the engines' own model cards, which
// their queue-proxies report in every stat (stats.EngineStat.Models), add
// max_model_len and root to the names Kvasir already lists. A card for a
// name Kvasir does not serve is ignored. Kvasir's fields stay Kvasir's: id,
// object, created, owned_by "kvasir", and parent, which for an adapter is
// the service's model name, the name clients use.
//
// A name's card is the one of the latest report among the ready pods of
// the service's serving revision: the revisions with traffic, the largest
// share first (a name@tag: the tagged revision), the decode pool before
// the prefill pool of a disaggregated one; the first that has a card gives
// it. Each pool remembers the last card it saw of each name, so that a
// revision scaled to zero still shows its max_model_len; it sees the cards
// when they are read here (a /v1/models request), not as reports arrive,
// which the stats follower (revision.go) does not tell. Reading the cards
// is in memory only (the stats streams keep the pods' reports); a pool's
// lock is held only to copy its pod list.

// modelEntry is one model of /v1/models, in vLLM's field order.
type modelEntry struct {
	ID          string `json:"id"`
	Object      string `json:"object"`
	Created     int64  `json:"created"`
	OwnedBy     string `json:"owned_by"`
	Root        string `json:"root,omitempty"`          // the engine's: the model's path, or the adapter's
	Parent      string `json:"parent,omitempty"`        // the base model of a LoRA adapter
	MaxModelLen int    `json:"max_model_len,omitempty"` // the engine's context length
}

// modelList is the body of GET /v1/models.
type modelList struct {
	Object string       `json:"object"`
	Data   []modelEntry `json:"data"`
}

// names returns the names a service serves: its model and its adapters.
func (s *service) names() map[string]struct{} {
	n := make(map[string]struct{}, 1+len(s.cfg.LoRAAdapters))
	n[s.cfg.Model] = struct{}{}
	for _, ad := range s.cfg.LoRAAdapters {
		n[ad] = struct{}{}
	}
	return n
}

// servingRevisions returns the revisions of the service with traffic, the
// largest share first (ties: in the order of the traffic spec).
func (s *service) servingRevisions() []*revisionRoute {
	targets := s.split.Targets()
	order := make([]traffic.Target, 0, len(targets))
	for _, t := range targets {
		if t.Percent > 0 {
			order = append(order, t)
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].Percent > order[j].Percent })
	out := make([]*revisionRoute, 0, len(order))
	for _, t := range order {
		if rr := s.revisions[t.Revision]; rr != nil {
			out = append(out, rr)
		}
	}
	return out
}

// cards returns the engine card of each name of the service that has one,
// from the revisions given, the first with a card winning.
func (s *service) cards(revs []*revisionRoute) map[string]stats.ModelCard {
	names := s.names()
	out := make(map[string]stats.ModelCard, len(names))
	for _, rr := range revs {
		for _, pool := range []*revision{rr.rev, rr.prefill} {
			if pool == nil {
				continue
			}
			for n, c := range pool.cards(names) {
				if _, ok := out[n]; !ok {
					out[n] = c
				}
			}
			if len(out) == len(names) {
				return out
			}
		}
	}
	return out
}

// entry is the model entry of id (a name of the service, or name@tag),
// with the engine's card of name when there is one.
func (s *service) entry(id, name string, adapter bool, cards map[string]stats.ModelCard) modelEntry {
	e := modelEntry{ID: id, Object: "model", OwnedBy: "kvasir"}
	if adapter {
		e.Parent = s.cfg.Model
	}
	if c, ok := cards[name]; ok {
		e.Root, e.MaxModelLen = c.Root, c.MaxModelLen
	}
	return e
}

// models builds the model list of a routing table.
func (t *table) models() modelList {
	data := make([]modelEntry, 0, len(t.byModel)+len(t.byAdapter))
	for m, s := range t.byModel {
		cards := s.cards(s.servingRevisions())
		data = append(data, s.entry(m, m, false, cards))
		for _, ad := range s.cfg.LoRAAdapters {
			if t.byAdapter[ad] == s {
				data = append(data, s.entry(ad, ad, true, cards))
			}
		}
	}
	sort.Slice(data, func(i, j int) bool { return data[i].ID < data[j].ID })
	return modelList{Object: "list", Data: data}
}

// modelsFor is the model list a tenant sees (nil: every model): the names
// it may call, and the name@tag entries it is granted without their name.
func (t *table) modelsFor(tn *tenant) modelList {
	list := t.models()
	if tn == nil || tn.all {
		return list
	}
	data := list.Data[:0]
	for _, e := range list.Data {
		if tn.models[e.ID] {
			data = append(data, e)
		}
	}
	for id := range tn.tagged {
		if name, _ := traffic.SplitModelTag(id); !tn.models[name] {
			if e, ok := t.model(id); ok {
				data = append(data, e)
			}
		}
	}
	sort.Slice(data, func(i, j int) bool { return data[i].ID < data[j].ID })
	return modelList{Object: list.Object, Data: data}
}

// model builds the entry of one model name: a service's model or adapter,
// or either with @tag for the tagged revision. ok is false when Kvasir
// does not route the name (or the tag).
func (t *table) model(id string) (e modelEntry, ok bool) {
	name := id
	s, adapter, ok := t.lookup(id)
	var revs []*revisionRoute
	if ok {
		revs = s.servingRevisions()
	} else {
		var tag string
		name, tag = traffic.SplitModelTag(id)
		if s, adapter, ok = t.lookup(name); !ok || tag == "" {
			return modelEntry{}, false
		}
		rev, tagged := s.split.Tagged(tag)
		if !tagged || s.revisions[rev] == nil {
			return modelEntry{}, false
		}
		revs = []*revisionRoute{s.revisions[rev]}
	}
	return s.entry(id, name, adapter != "", s.cards(revs)), true
}

// cardMemo is what a pool remembers of its engines' cards: the last card
// seen of each name of its service.
type cardMemo struct {
	mu    sync.Mutex
	cards map[string]stats.ModelCard
}

// podReport is a ready pod's latest report, by the pod's name.
type podReport struct {
	pod  string
	stat *stats.Stat
}

// cards returns the card of each of names that the pool's engines report:
// of the ready pods' reports, the latest (ties: the pod whose name sorts
// first); for a name none of them reports, the last card the pool saw.
// names are all the names of the pool's service: what the pool remembers
// of others is forgotten.
func (r *revision) cards(names map[string]struct{}) map[string]stats.ModelCard {
	r.mu.Lock()
	reports := make([]podReport, 0, len(r.pods))
	for _, p := range r.pods {
		if s := p.Stat(); s != nil && len(s.Engine.Models) > 0 {
			reports = append(reports, podReport{p.Name, s})
		}
	}
	r.mu.Unlock()

	type seen struct {
		card stats.ModelCard
		at   podReport
	}
	live := map[string]seen{}
	for _, rep := range reports {
		for _, c := range rep.stat.Engine.Models {
			if _, ok := names[c.ID]; !ok || len(c.Root) > stats.MaxModelCardString {
				continue // stats.Decode bounded the cards: this is for reports from elsewhere
			}
			if c.MaxModelLen < 0 || c.MaxModelLen > stats.MaxModelLen {
				c.MaxModelLen = 0
			}
			if cur, ok := live[c.ID]; ok && !newer(rep, cur.at) {
				continue
			}
			live[c.ID] = seen{c, rep}
		}
	}

	m := &r.cardMemo
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cards == nil {
		m.cards = map[string]stats.ModelCard{}
	}
	for n, s := range live {
		m.cards[n] = s.card
	}
	out := make(map[string]stats.ModelCard, len(m.cards))
	for n, c := range m.cards {
		if _, ok := names[n]; !ok {
			delete(m.cards, n)
			continue
		}
		out[n] = c
	}
	return out
}

// newer reports whether report a wins over b: a later time, or the same
// time from a pod whose name sorts first.
func newer(a, b podReport) bool {
	if !a.stat.Time.Equal(b.stat.Time) {
		return a.stat.Time.After(b.stat.Time)
	}
	return a.pod < b.pod
}
