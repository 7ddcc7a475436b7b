package activator

import "math/rand/v2"

// Picker chooses one endpoint among eligible ones. It is called with the
// revision's lock held and must not block. The plugin framework of the
// scheduler implements this seam.
type Picker interface {
	Pick(candidates []*endpoint) *endpoint
}

// LeastRequest picks the endpoint with the fewest in-flight requests seen by
// this activator, breaking ties at random.
type LeastRequest struct{}

var _ Picker = LeastRequest{}

// Pick implements Picker.
func (LeastRequest) Pick(cands []*endpoint) *endpoint {
	best, ties := cands[0], 1
	for _, e := range cands[1:] {
		switch {
		case e.inFlight < best.inFlight:
			best, ties = e, 1
		case e.inFlight == best.inFlight:
			ties++
			if rand.IntN(ties) == 0 {
				best = e
			}
		}
	}
	return best
}
