package traffic

import (
	"fmt"
	"strings"
)

// Target is one resolved traffic target: a concrete revision.
type Target struct {
	Revision string
	Percent  int
	Tag      string
}

// Split picks revisions by percent and resolves tags. It is immutable and
// safe for concurrent use.
type Split struct {
	targets []Target
	cum     []int // cumulative percents of targets with Percent > 0
	idx     []int
	tags    map[string]string
}

// New builds a split. Percents must be in 0..100 and sum to 100 (unless
// there is exactly one target, which gets everything); tags must be unique.
func New(targets []Target) (*Split, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("traffic: no targets")
	}
	s := &Split{targets: targets, tags: map[string]string{}}
	if len(targets) == 1 && targets[0].Percent == 0 {
		targets[0].Percent = 100
	}
	sum := 0
	for i, t := range targets {
		if t.Revision == "" {
			return nil, fmt.Errorf("traffic[%d]: no revision", i)
		}
		if t.Percent < 0 || t.Percent > 100 {
			return nil, fmt.Errorf("traffic[%d].percent: %d out of 0..100", i, t.Percent)
		}
		if t.Tag != "" {
			if _, dup := s.tags[t.Tag]; dup {
				return nil, fmt.Errorf("traffic[%d].tag: duplicate tag %q", i, t.Tag)
			}
			s.tags[t.Tag] = t.Revision
		}
		if t.Percent > 0 {
			sum += t.Percent
			s.cum = append(s.cum, sum)
			s.idx = append(s.idx, i)
		}
	}
	if sum != 100 {
		return nil, fmt.Errorf("traffic: percents sum to %d, not 100", sum)
	}
	return s, nil
}

// Pick returns the revision for a uniform draw r in [0, 100).
func (s *Split) Pick(r int) string {
	for i, c := range s.cum {
		if r < c {
			return s.targets[s.idx[i]].Revision
		}
	}
	return s.targets[s.idx[len(s.idx)-1]].Revision
}

// Tagged returns the revision a tag names.
func (s *Split) Tagged(tag string) (string, bool) {
	rev, ok := s.tags[tag]
	return rev, ok
}

// Targets returns the targets (do not modify).
func (s *Split) Targets() []Target { return s.targets }

// SplitModelTag splits "name@tag" into name and tag.
func SplitModelTag(model string) (name, tag string) {
	if i := strings.LastIndexByte(model, '@'); i > 0 {
		return model[:i], model[i+1:]
	}
	return model, ""
}
