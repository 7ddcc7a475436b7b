package bench

import (
	"slices"
	"time"
)

// The backlogged share of a multi-tenant run (issue 15's fairness goal:
// while every tenant is backlogged, the tokens served to each stay near an
// even split), computed from the client's records alone:
//
//   - A tenant is backlogged at time t when one of its requests has been sent
//     and has not yet received its first token: its first content chunk
//     when streamed, its answer otherwise (or its error, or its
//     cancellation). Each request is backlogged over the closed interval
//     [sent, first token].
//   - The contended moments are those at which every tenant of the run is
//     backlogged: the intersection of the tenants' backlogs (each the union
//     of its requests' intervals), kept where it lasts more than an instant.
//   - A completed request's prompt tokens are served at its first token,
//     and its output tokens evenly over [first token, end] (all at the end
//     when the two coincide, as for an answer that is not streamed).
//   - A tenant's backlogged share is its tokens served during the contended
//     moments over all tenants' tokens served during them.
//
// A run of fewer than two tenants has no such share, nor one whose tenants
// were never all backlogged at once, nor one that served no token while they
// were.

// interval is a closed interval of seconds.
type interval struct{ from, to float64 }

// servedRecord is what the backlogged share needs of one request: its
// times in seconds from a common origin, and its tokens when it completed.
type servedRecord struct {
	sent, first, end float64
	// ok: the request completed; only then are its tokens served.
	ok             bool
	prompt, output float64
}

// recordOf returns the record of s, with times from origin; false when s
// was never sent.
func recordOf(s *sample, origin time.Time) (servedRecord, bool) {
	if s.sent.IsZero() {
		return servedRecord{}, false
	}
	sent := s.sent.Sub(origin).Seconds()
	end := sent + s.e2e.Seconds()
	first := end
	if s.streamed && s.chunks > 0 {
		first = sent + s.ttft.Seconds()
	}
	return servedRecord{sent: sent, first: first, end: end, ok: s.outcome == outcomeOK,
		prompt: float64(s.prompt), output: float64(s.output)}, true
}

// backloggedShares computes each tenant's backlogged share from its records
// and the total length of the contended moments in seconds. shares is nil
// when it is undefined: fewer than two tenants, no contended moment, or no
// token served in them.
func backloggedShares(tenants [][]servedRecord) (shares []float64, seconds float64) {
	if len(tenants) < 2 {
		return nil, 0
	}
	var all []interval
	for i, recs := range tenants {
		b := backlog(recs)
		if i == 0 {
			all = b
		} else {
			all = intersect(all, b)
		}
	}
	all = slices.DeleteFunc(all, func(iv interval) bool { return iv.to <= iv.from })
	for _, iv := range all {
		seconds += iv.to - iv.from
	}
	if len(all) == 0 {
		return nil, 0
	}
	served := make([]float64, len(tenants))
	total := 0.0
	for i, recs := range tenants {
		for _, r := range recs {
			if !r.ok {
				continue
			}
			if contains(all, r.first) {
				served[i] += r.prompt
			}
			switch {
			case r.end > r.first:
				served[i] += r.output * overlap(all, r.first, r.end) / (r.end - r.first)
			case contains(all, r.first):
				served[i] += r.output
			}
		}
		total += served[i]
	}
	if total <= 0 {
		return nil, seconds
	}
	for i := range served {
		served[i] /= total
	}
	return served, seconds
}

// backlog returns the union of the records' [sent, first] intervals, sorted
// and merged (intervals that touch merge).
func backlog(recs []servedRecord) []interval {
	ivs := make([]interval, 0, len(recs))
	for _, r := range recs {
		if r.first >= r.sent {
			ivs = append(ivs, interval{r.sent, r.first})
		}
	}
	slices.SortFunc(ivs, func(a, b interval) int {
		switch {
		case a.from < b.from:
			return -1
		case a.from > b.from:
			return 1
		}
		return 0
	})
	var out []interval
	for _, iv := range ivs {
		if n := len(out); n > 0 && iv.from <= out[n-1].to {
			out[n-1].to = max(out[n-1].to, iv.to)
			continue
		}
		out = append(out, iv)
	}
	return out
}

// intersect returns the intersection of two sorted lists of disjoint closed
// intervals.
func intersect(a, b []interval) []interval {
	var out []interval
	for i, j := 0, 0; i < len(a) && j < len(b); {
		from, to := max(a[i].from, b[j].from), min(a[i].to, b[j].to)
		if from <= to {
			out = append(out, interval{from, to})
		}
		if a[i].to < b[j].to {
			i++
		} else {
			j++
		}
	}
	return out
}

// contains reports whether t is in one of the sorted disjoint intervals.
func contains(ivs []interval, t float64) bool {
	i, _ := slices.BinarySearchFunc(ivs, t, func(iv interval, t float64) int {
		if iv.to < t {
			return -1
		}
		if iv.from > t {
			return 1
		}
		return 0
	})
	return i < len(ivs) && ivs[i].from <= t && t <= ivs[i].to
}

// overlap returns the length of [from, to] covered by the sorted disjoint
// intervals.
func overlap(ivs []interval, from, to float64) float64 {
	i, _ := slices.BinarySearchFunc(ivs, from, func(iv interval, t float64) int {
		if iv.to < t {
			return -1
		}
		return 1
	})
	sum := 0.0
	for ; i < len(ivs) && ivs[i].from < to; i++ {
		sum += max(0, min(ivs[i].to, to)-max(ivs[i].from, from))
	}
	return sum
}
