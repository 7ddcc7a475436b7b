package autoscaler

import (
	"fmt"
	"math"

	"github.com/kvasir-serving/kvasir/pkg/apis/serving/v1alpha1"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// Ratio bounds prefill replicas per decode replica; Max 0 is unbounded.
type Ratio struct{ Min, Max float64 }

// RatioOf reads a revision's roles.ratio (nil when unset).
func RatioOf(r *v1alpha1.RolesSpec) *Ratio {
	if r == nil || r.Ratio == nil {
		return nil
	}
	out := &Ratio{}
	if r.Ratio.Min != nil {
		out.Min = *r.Ratio.Min
	}
	if r.Ratio.Max != nil {
		out.Max = *r.Ratio.Max
	}
	return out
}

// CoupleRoles adjusts a disaggregated revision's prefill decision to its
// decode decision: the prefill role follows decode to zero and wakes with
// it (prefill requests are never buffered, so at zero the prefill role has
// no demand of its own), and stays within the ratio. Above that each role
// scales on its own signals. clamp applies the prefill role's own
// minScale and maxScale, which win over the ratio.
func CoupleRoles(decode, prefill Decision, ratio *Ratio, clamp func(int) int) Decision {
	if decode.Desired == 0 {
		if prefill.Desired > 0 {
			prefill.Desired, prefill.Reason = 0, "its decode role is at zero"
		}
		return prefill
	}
	if prefill.Desired == 0 {
		prefill.Desired, prefill.Reason = 1, "its decode role is awake"
	}
	if ratio != nil {
		d := float64(decode.Desired)
		if lo := int(math.Ceil(ratio.Min*d - 1e-9)); prefill.Desired < lo {
			prefill.Desired, prefill.Reason = lo, fmt.Sprintf("ratio: at least %g prefill per decode replica", ratio.Min)
		}
		if ratio.Max > 0 {
			if hi := max(1, int(math.Floor(ratio.Max*d+1e-9))); prefill.Desired > hi {
				prefill.Desired, prefill.Reason = hi, fmt.Sprintf("ratio: at most %g prefill per decode replica", ratio.Max)
			}
		}
	}
	if clamp != nil {
		prefill.Desired = clamp(prefill.Desired)
	}
	return prefill
}

// CoupleAll applies CoupleRoles to every prefill role in want whose decode
// role is in want too; bounds gives a prefill role's ratio and clamp.
func CoupleAll(want map[fleet.Key]Decision, bounds func(prefill fleet.Key) (*Ratio, func(int) int)) {
	for key, dec := range want {
		if key.Role != fleet.RolePrefill {
			continue
		}
		dk := key
		dk.Role = fleet.RoleDecode
		if decode, ok := want[dk]; ok {
			ratio, clamp := bounds(key)
			want[key] = CoupleRoles(decode, dec, ratio, clamp)
		}
	}
}

// Clamp bounds n by the decider's minScale and maxScale.
func (d *Decider) Clamp(n int) int { return d.clamp(n) }
