package autoscaler

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/kvasir-serving/kvasir/pkg/fleet"
)

// fakeObserver hands out the same roles every pass; err fails the pass.
type fakeObserver struct {
	roles []Observed
	err   error
}

func (f *fakeObserver) Observe(context.Context, time.Time) ([]Observed, error) { return f.roles, f.err }

// fakeScaler records what it scaled, in order; fail refuses some keys.
type fakeScaler struct {
	order  []fleet.Key
	scaled map[fleet.Key]map[string]int
	fail   map[fleet.Key]bool
}

func (f *fakeScaler) ScaleVariants(_ context.Context, key fleet.Key, counts map[string]int) error {
	if f.fail[key] {
		return errors.New("refused")
	}
	f.order = append(f.order, key)
	f.scaled[key] = maps.Clone(counts)
	return nil
}

// fakeReporter keeps the decisions and results it is told of.
type fakeReporter struct {
	decided          map[fleet.Key]Decision
	placing, results []*Result
}

func (f *fakeReporter) Decided(r *Role, _ Signals, dec Decision) { f.decided[r.Key] = dec }
func (f *fakeReporter) Placing(res *Result)                      { f.placing = append(f.placing, res) }
func (f *fakeReporter) Placed(res *Result)                       { f.results = append(f.results, res) }

func key(rev, role string) fleet.Key {
	return fleet.Key{Namespace: "default", Revision: rev, Role: role}
}

var (
	unified = key("u", fleet.RoleUnified)
	prefill = key("pd", fleet.RolePrefill)
	decode  = key("pd", fleet.RoleDecode)
	gpu     = map[string]int{"nvidia.com/gpu": 1}
)

// roleSpec is a role for the table: its decider's config, the replicas
// it runs per variant (and last applied: their sum) and what it observes.
type roleSpec struct {
	key   fleet.Key
	cfg   Config
	ratio *Ratio
	obs   Observation
}

// want overrides the decider: the runtime's decision for a role.
func want(n int) *Decision { return &Decision{Desired: n, Reason: "test"} }

func one(current int, need map[string]int) []Variant {
	return []Variant{{Need: need, Current: current}}
}

func observed(t *testing.T, specs []roleSpec) []Observed {
	t.Helper()
	var out []Observed
	for _, s := range specs {
		d, err := NewDecider(s.cfg, time.Unix(0, 0))
		require.NoError(t, err)
		placed := 0
		for _, v := range s.obs.Variants {
			placed += v.Current
		}
		d.Resume(placed)
		out = append(out, Observed{Role: &Role{Key: s.key, Decider: d, Ratio: s.ratio, Placed: placed}, Observation: s.obs})
	}
	return out
}

type expect struct {
	scaled      map[string]int // nil: not applied
	placed      int
	unplaceable int
}

func TestPass(t *testing.T) {
	a, b, c := key("a", ""), key("b", ""), key("c", "")
	for _, tc := range []struct {
		name  string
		roles []roleSpec
		free  Pool
		fail  []fleet.Key
		want  map[fleet.Key]expect
		order []fleet.Key // the order results come in, when it matters
	}{{
		name:  "scale from zero",
		roles: []roleSpec{{key: unified, obs: Observation{Buffered: 1, Variants: one(0, nil)}}},
		want:  map[fleet.Key]expect{unified: {scaled: map[string]int{"": 1}, placed: 1}},
	}, {
		name: "prefill follows decode to zero",
		roles: []roleSpec{
			{key: decode, obs: Observation{Override: want(0), Variants: one(1, nil)}},
			{key: prefill, obs: Observation{Override: want(2), Variants: one(2, nil)}},
		},
		want: map[fleet.Key]expect{decode: {scaled: map[string]int{}}, prefill: {scaled: map[string]int{}}},
	}, {
		name: "prefill wakes with decode, within the ratio",
		roles: []roleSpec{
			{key: decode, obs: Observation{Override: want(4), Variants: one(0, nil)}},
			{key: prefill, ratio: &Ratio{Min: 0.5}, obs: Observation{Override: want(0), Variants: one(0, nil)}},
		},
		want: map[fleet.Key]expect{decode: {scaled: map[string]int{"": 4}, placed: 4}, prefill: {scaled: map[string]int{"": 2}, placed: 2}},
	}, {
		name: "the prefill role's maxScale wins over the ratio",
		roles: []roleSpec{
			{key: decode, obs: Observation{Override: want(10), Variants: one(1, nil)}},
			{key: prefill, cfg: Config{MaxScale: 3}, ratio: &Ratio{Min: 0.5}, obs: Observation{Override: want(1), Variants: one(1, nil)}},
		},
		want: map[fleet.Key]expect{decode: {scaled: map[string]int{"": 10}, placed: 10}, prefill: {scaled: map[string]int{"": 3}, placed: 3}},
	}, {
		// c shrinks first and gives back a GPU, b wakes from zero and takes
		// both, a (growing, last despite its name) finds none.
		name: "priority when accelerators are short",
		roles: []roleSpec{
			{key: a, obs: Observation{Override: want(3), Variants: one(1, gpu)}},
			{key: b, obs: Observation{Override: want(2), Variants: one(0, gpu)}},
			{key: c, obs: Observation{Override: want(1), Variants: one(2, gpu)}},
		},
		free:  Pool{"nvidia.com/gpu": 1},
		want:  map[fleet.Key]expect{a: {placed: 1, unplaceable: 2}, b: {scaled: map[string]int{"": 2}, placed: 2}, c: {scaled: map[string]int{"": 1}, placed: 1}},
		order: []fleet.Key{c, b, a},
	}, {
		name: "growth spills to the next variant by cost",
		roles: []roleSpec{{key: unified, obs: Observation{Override: want(3), Variants: []Variant{
			{Name: "a100", Cost: 2, Need: map[string]int{"amd.com/gpu": 1}}, {Name: "h100", Cost: 1, Need: gpu}}}}},
		free: Pool{"nvidia.com/gpu": 1, "amd.com/gpu": 5},
		want: map[fleet.Key]expect{unified: {scaled: map[string]int{"h100": 1, "a100": 2}, placed: 3}},
	}, {
		name:  "unplaceable replicas are reported, the rest placed",
		roles: []roleSpec{{key: unified, obs: Observation{Override: want(3), Variants: one(0, gpu)}}},
		free:  Pool{"nvidia.com/gpu": 1},
		want:  map[fleet.Key]expect{unified: {scaled: map[string]int{"": 1}, placed: 1, unplaceable: 2}},
	}, {
		name:  "no apply when nothing changes",
		roles: []roleSpec{{key: unified, obs: Observation{Override: want(2), Variants: one(2, gpu)}}},
		want:  map[fleet.Key]expect{unified: {placed: 2}},
	}, {
		name: "a failing apply keeps what was placed",
		roles: []roleSpec{
			{key: a, obs: Observation{Override: want(2), Variants: one(1, nil)}},
			{key: b, obs: Observation{Override: want(2), Variants: one(1, nil)}},
		},
		fail: []fleet.Key{a},
		want: map[fleet.Key]expect{a: {placed: 1}, b: {scaled: map[string]int{"": 2}, placed: 2}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			roles := observed(t, tc.roles)
			s := &fakeScaler{scaled: map[fleet.Key]map[string]int{}, fail: map[fleet.Key]bool{}}
			for _, k := range tc.fail {
				s.fail[k] = true
			}
			rep := &fakeReporter{decided: map[fleet.Key]Decision{}}
			free := tc.free
			if free == nil {
				free = Pool{}
			}
			results, err := Pass{Observer: &fakeObserver{roles: roles}, Capacity: free, Scaler: s, Reporter: rep}.Run(context.Background(), time.Unix(1, 0))
			require.NoError(t, err)
			require.Len(t, results, len(tc.roles))
			require.Equal(t, results, rep.results, "the reporter is told of every result")
			require.Len(t, rep.decided, len(tc.roles))
			var order []fleet.Key
			for _, res := range results {
				order = append(order, res.Role.Key)
				w := tc.want[res.Role.Key]
				require.Equal(t, w.scaled, s.scaled[res.Role.Key], "%s scaled", res.Role.Key)
				require.Equal(t, w.placed, res.Role.Placed, "%s placed", res.Role.Key)
				require.Equal(t, w.unplaceable, res.Role.Unplaceable, "%s unplaceable", res.Role.Key)
				require.Equal(t, w.unplaceable > 0, res.NewMessage)
				require.Equal(t, res.Role.Key == key("a", "") && len(tc.fail) > 0, res.Err != nil)
			}
			if tc.order != nil {
				require.Equal(t, tc.order, order)
			}
		})
	}
}

// A failed apply leaves the role as it was, and the next pass (observing
// the same replicas, since none changed) applies it again.
func TestPassRetriesAFailedApply(t *testing.T) {
	roles := observed(t, []roleSpec{{key: unified, obs: Observation{Override: want(3), Variants: one(1, nil)}}})
	s := &fakeScaler{scaled: map[fleet.Key]map[string]int{}, fail: map[fleet.Key]bool{unified: true}}
	rep := &fakeReporter{decided: map[fleet.Key]Decision{}}
	p := Pass{Observer: &fakeObserver{roles: roles}, Capacity: Pool{}, Scaler: s, Reporter: rep}

	res, err := p.Run(context.Background(), time.Unix(1, 0))
	require.NoError(t, err)
	require.ErrorContains(t, res[0].Err, "refused")
	require.True(t, res[0].Changed)
	require.Equal(t, 1, roles[0].Role.Placed)

	delete(s.fail, unified)
	res, err = p.Run(context.Background(), time.Unix(2, 0))
	require.NoError(t, err)
	require.NoError(t, res[0].Err)
	require.Equal(t, 1, res[0].From)
	require.Equal(t, map[string]int{"": 3}, s.scaled[unified])
	require.Equal(t, 3, roles[0].Role.Placed)
}

// Replicas left out are said once per change of what is missing.
func TestPassSaysUnplaceableOncePerChange(t *testing.T) {
	roles := observed(t, []roleSpec{{key: unified, obs: Observation{Override: want(3), Variants: one(0, gpu)}}})
	obs := &fakeObserver{roles: roles}
	s := &fakeScaler{scaled: map[fleet.Key]map[string]int{}}
	rep := &fakeReporter{decided: map[fleet.Key]Decision{}}
	run := func(free int) *Result {
		t.Helper()
		res, err := Pass{Observer: obs, Capacity: Pool{"nvidia.com/gpu": free}, Scaler: s, Reporter: rep}.Run(context.Background(), time.Unix(1, 0))
		require.NoError(t, err)
		return res[0]
	}
	res := run(1)
	require.True(t, res.NewMessage)
	require.Equal(t, "2 replica(s) cannot be placed: not enough free nvidia.com/gpu", roles[0].Role.Message)
	require.False(t, run(1).NewMessage, "the same message is not said again")
	res = run(3)
	require.False(t, res.NewMessage)
	require.Empty(t, roles[0].Role.Message)
	require.Zero(t, roles[0].Role.Unplaceable)
	require.True(t, run(0).NewMessage, "said again after it changed")
}

// An observer's error skips the pass: nothing is decided or scaled.
func TestPassSkippedWhenObservingFails(t *testing.T) {
	s := &fakeScaler{scaled: map[fleet.Key]map[string]int{}}
	rep := &fakeReporter{decided: map[fleet.Key]Decision{}}
	_, err := Pass{Observer: &fakeObserver{err: errors.New("no API")}, Capacity: Pool{}, Scaler: s, Reporter: rep}.Run(context.Background(), time.Unix(1, 0))
	require.ErrorContains(t, err, "no API")
	require.Empty(t, s.scaled)
	require.Empty(t, rep.decided)
}

// Growth takes from a pool and shrinking gives back.
func TestPoolTake(t *testing.T) {
	p := Pool{"nvidia.com/gpu": 4}
	p.Take([]Variant{{Need: map[string]int{"nvidia.com/gpu": 2}, Current: 1}}, []int{2})
	require.Equal(t, 2, p["nvidia.com/gpu"])
	p.Take([]Variant{{Need: map[string]int{"nvidia.com/gpu": 1}, Current: 3}}, []int{0})
	require.Equal(t, 5, p["nvidia.com/gpu"])
}
