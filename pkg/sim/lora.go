package sim

import (
	"slices"
	"sync"
)

// loraSet is the set of served LoRA adapters, name to path.
type loraSet struct {
	mu    sync.RWMutex
	paths map[string]string
}

func newLoRASet(mods []LoRAModule) *loraSet {
	l := &loraSet{paths: make(map[string]string, len(mods))}
	for _, m := range mods {
		l.paths[m.Name] = m.Path
	}
	return l
}

func (l *loraSet) has(name string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.paths[name]
	return ok
}

// add reports false when the name is taken.
func (l *loraSet) add(name, path string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.paths[name]; ok {
		return false
	}
	l.paths[name] = path
	return true
}

// remove reports false when the adapter is not loaded.
func (l *loraSet) remove(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.paths[name]; !ok {
		return false
	}
	delete(l.paths, name)
	return true
}

// list returns the adapters sorted by name.
func (l *loraSet) list() []LoRAModule {
	l.mu.RLock()
	out := make([]LoRAModule, 0, len(l.paths))
	for n, p := range l.paths {
		out = append(out, LoRAModule{Name: n, Path: p})
	}
	l.mu.RUnlock()
	slices.SortFunc(out, func(a, b LoRAModule) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}
