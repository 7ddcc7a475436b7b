package local

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// The scaler couples each disaggregated revision's prefill role to its
// decode role (the rules themselves are table-tested in pkg/autoscaler).
func TestScalerCouplesPrefillToDecode(t *testing.T) {
	pre := fleet.Key{Service: "s", Revision: "s-00001", Role: fleet.RolePrefill}
	dec := fleet.Key{Service: "s", Revision: "s-00001", Role: fleet.RoleDecode}
	d, err := autoscaler.NewDecider(autoscaler.Config{MaxScale: 3}, time.Now())
	require.NoError(t, err)
	s := &scaler{targets: map[fleet.Key]*scaleTarget{
		pre: {key: pre, decider: d, ratio: &autoscaler.Ratio{Min: 0.5}},
		dec: {key: dec},
	}}
	want := map[fleet.Key]autoscaler.Decision{pre: {Desired: 2}, dec: {Desired: 0}}
	s.couplePrefill(want)
	require.Equal(t, 0, want[pre].Desired, "to zero together")
	want = map[fleet.Key]autoscaler.Decision{pre: {Desired: 1}, dec: {Desired: 4}}
	s.couplePrefill(want)
	require.Equal(t, 2, want[pre].Desired, "within the ratio")
	want = map[fleet.Key]autoscaler.Decision{pre: {Desired: 1}, dec: {Desired: 10}}
	s.couplePrefill(want)
	require.Equal(t, 3, want[pre].Desired, "the prefill role's maxScale wins")
}
