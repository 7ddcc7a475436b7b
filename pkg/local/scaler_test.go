package local

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/activator"
	"github.com/kvasir-serving/kvasir/pkg/autoscaler"
	"github.com/kvasir-serving/kvasir/pkg/fleet"
	"github.com/kvasir-serving/kvasir/pkg/stats"
)

type fakeLoads map[fleet.Key]activator.Load

func (f fakeLoads) Load(k fleet.Key) (activator.Load, bool) { l, ok := f[k]; return l, ok }
func (fakeLoads) PodStats(fleet.Key) []*stats.Stat          { return nil }

// fakeFleet records what it was asked to scale; err fails every call.
type fakeFleet struct {
	scaled map[fleet.Key]map[string]int
	err    error
}

func (f *fakeFleet) ScaleVariants(_ context.Context, key fleet.Key, counts map[string]int) error {
	if f.err != nil {
		return f.err
	}
	f.scaled[key] = maps.Clone(counts)
	return nil
}

func decider(t *testing.T, cfg autoscaler.Config) *autoscaler.Decider {
	t.Helper()
	d, err := autoscaler.NewDecider(cfg, time.Now())
	require.NoError(t, err)
	return d
}

// The scaler couples each disaggregated revision's prefill role to its
// decode role (the rules themselves are table-tested in pkg/autoscaler).
func TestScalerCouplesPrefillToDecode(t *testing.T) {
	pre := fleet.Key{Service: "s", Revision: "s-00001", Role: fleet.RolePrefill}
	dec := fleet.Key{Service: "s", Revision: "s-00001", Role: fleet.RoleDecode}
	for _, tc := range []struct {
		name           string
		decodeBuffered int // at a target of 8 per replica: decode wants buffered/8
		prefillInitial int // what the prefill role's own decider wants
		want           int
	}{
		{"to zero together", 0, 2, 0},
		{"within the ratio", 32, 1, 2},
		{"the prefill role's maxScale wins", 80, 1, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeFleet{scaled: map[fleet.Key]map[string]int{}}
			s := newScaler(slog.New(slog.DiscardHandler), fakeLoads{pre: {}, dec: {Buffered: tc.decodeBuffered}}, f, time.Second, nil)
			p := newScaleTarget(pre, decider(t, autoscaler.Config{MaxScale: 3, InitialScale: tc.prefillInitial}), []autoscaler.Variant{{}})
			p.role.Ratio = &autoscaler.Ratio{Min: 0.5}
			p.counts, p.role.Placed = map[string]int{"": 1}, 1
			s.add(p)
			s.add(newScaleTarget(dec, decider(t, autoscaler.Config{}), []autoscaler.Variant{{}}))
			s.decideAll(context.Background(), time.Now())
			require.Equal(t, tc.want, f.scaled[pre][""])
			require.Equal(t, tc.want, p.role.Placed)
		})
	}
}

// A failed scale keeps the replica set's counts, so the next pass retries.
func TestScalerRetriesAFailedScale(t *testing.T) {
	key := fleet.Key{Service: "s", Revision: "s-00001"}
	f := &fakeFleet{scaled: map[fleet.Key]map[string]int{}, err: errors.New("boom")}
	s := newScaler(slog.New(slog.DiscardHandler), fakeLoads{key: {Buffered: 16}}, f, time.Second, nil)
	tgt := newScaleTarget(key, decider(t, autoscaler.Config{}), []autoscaler.Variant{{}})
	tgt.role.Decider.Resume(0)
	s.add(tgt)
	s.decideAll(context.Background(), time.Now())
	require.Empty(t, tgt.counts)
	require.Zero(t, tgt.role.Placed)
	f.err = nil
	s.decideAll(context.Background(), time.Now())
	require.Equal(t, map[string]int{"": 2}, f.scaled[key])
	require.Equal(t, map[string]int{"": 2}, tgt.counts)
}
